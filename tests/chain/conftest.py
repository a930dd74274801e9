"""Chain fixtures: a local anvil node; settings with the chain on, on the embedded EVM or on anvil."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from tally.chain.anvil import ANVIL_DEV_KEY, AnvilNode
from tally.cli.main import app
from tally.config import Settings, load_settings


@pytest.fixture
def anvil_node() -> Iterator[AnvilNode]:
    """A fresh anvil on a free port (chain id 31337), stopped after the test. Fails when anvil is not installed."""
    with AnvilNode() as node:
        yield node


@pytest.fixture(params=["embedded", "anvil"])
def chain_settings(
    request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings with the chain on: the embedded EVM in the data directory, or an anvil node on loopback."""
    monkeypatch.setenv("TALLY_CHAIN__ENABLED", "true")
    if request.param == "embedded":
        yield load_settings()
        return
    with AnvilNode() as node:
        monkeypatch.setenv("TALLY_CHAIN__URL", node.url)
        monkeypatch.setenv("TALLY_CHAIN_PRIVATE_KEY", ANVIL_DEV_KEY)
        yield deployed(load_settings(), monkeypatch)


def deployed(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """`tally chain deploy`, then the addresses in the configuration, as an operator of a real chain does."""
    result = CliRunner().invoke(app, ["chain", "deploy"])
    assert result.exit_code == 0, result.output
    for name, setting in (("LedgerAnchor", "ANCHOR"), ("RewardToken", "TOKEN"), ("RewardDistributor", "DISTRIBUTOR"),
                          ("ContributionVerifier", "VERIFIER")):  # fmt: skip
        monkeypatch.setenv(f"TALLY_CHAIN__{setting}_ADDRESS", json.loads(result.output)[name])
    return load_settings()
