"""Anchoring the ledger on chain, on the embedded EVM and on anvil: idempotent anchors, a rewritten log caught,
receipts checked against the chain, state kept across restarts."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import append_notes
from typer.testing import CliRunner

from tally.chain import (
    Chain,
    ChainDivergence,
    ChainError,
    anchor_head,
    anchored_receipt,
    check_receipt_anchor,
    verify_anchors,
)
from tally.chain.anchor import chain_anchors
from tally.cli.main import app
from tally.config import Settings, load_settings
from tally.ledger import Ledger, open_ledger, verify_receipt
from tally.store import Store, open_store

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def opened(chain_settings: Settings) -> Iterator[tuple[Store, Ledger, Chain]]:
    store = open_store(chain_settings)
    yield store, open_ledger(chain_settings, store), Chain(chain_settings, store)
    store.dispose()


def test_anchoring_is_idempotent_and_verifies(opened: tuple[Store, Ledger, Chain]) -> None:
    store, ledger, chain = opened
    append_notes(ledger, 40)
    first = anchor_head(chain, ledger)
    assert first.anchor is not None and first.anchor.size == ledger.size() == 41
    assert first.anchor.gas_used is not None and first.anchor.gas_used <= 85_000
    assert anchor_head(chain, ledger).anchor is None  # the chain already holds this size: nothing is sent
    append_notes(ledger, 25, prefix="more")
    second = anchor_head(chain, ledger)
    assert second.anchor is not None and second.anchor.size == 66
    report = verify_anchors(chain, ledger)
    assert [a.size for a in report.anchors] == [41, 66] and report.unanchored == 0
    with chain.connect() as w3:
        assert len(chain_anchors(chain, w3, ledger.origin)) == 2  # one event per anchor, none repeated

    receipt = anchored_receipt(store, ledger, 50)  # entry 50 is first covered by the anchor at 66
    assert receipt["tree_size"] == 66 and receipt["anchor"]["tree_size"] == 66
    assert verify_receipt(receipt).seq == 50
    with chain.connect() as w3:
        checked = check_receipt_anchor(receipt, w3)
    assert checked["block_number"] == second.anchor.block_number
    forged = json.loads(json.dumps(receipt))
    forged["anchor"]["tree_size"] = 41
    with chain.connect() as w3, pytest.raises(ChainDivergence):
        check_receipt_anchor(forged, w3)


def test_a_rewritten_and_resigned_log_is_caught(chain_settings: Settings, tmp_path: Path, monkeypatch) -> None:
    store = open_store(chain_settings)
    ledger = open_ledger(chain_settings, store)
    append_notes(ledger, 30)
    anchored = anchor_head(chain_settings_chain := Chain(chain_settings, store), ledger).anchor
    assert anchored is not None
    assert verify_anchors(chain_settings_chain, ledger).anchors
    store.dispose()

    # The operator rewrites history: a new database, same signing key and origin, different entries.
    monkeypatch.setenv("TALLY_DATABASE_URL", f"sqlite:///{tmp_path / 'rewritten.db'}")
    monkeypatch.setenv("TALLY_LEDGER__ORIGIN", chain_settings.ledger.origin)
    rewritten = load_settings()
    store2 = open_store(rewritten)
    ledger2 = open_ledger(rewritten, store2)
    append_notes(ledger2, 35, prefix="forged")
    ledger2.checkpoint()  # re-signed with the same key: only the chain can tell
    with pytest.raises(ChainDivergence) as caught:
        verify_anchors(Chain(rewritten, store2), ledger2)
    assert caught.value.values["size"] == 31
    assert caught.value.values["anchored_root"] == anchored.root
    assert caught.value.values["local_root"] != anchored.root
    store2.dispose()
    result = runner.invoke(app, ["chain", "verify"])
    assert result.exit_code == 5, result.output  # conflict
    assert "size 31" in result.output and anchored.root in result.output


def test_cli_status_anchor_verify_and_receipt(chain_settings: Settings, tmp_path: Path) -> None:
    store = open_store(chain_settings)
    append_notes(open_ledger(chain_settings, store), 9)
    store.dispose()
    result = runner.invoke(app, ["chain", "status"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert set(status["contracts"]) == {"LedgerAnchor", "RewardToken", "RewardDistributor", "ContributionVerifier"}
    assert status["log"]["unanchored_entries"] == 10
    result = runner.invoke(app, ["chain", "anchor"])
    assert result.exit_code == 0 and "anchored size 10" in result.output, result.output
    result = runner.invoke(app, ["chain", "anchor"])
    assert result.exit_code == 0 and "already anchored" in result.output
    result = runner.invoke(app, ["chain", "verify"])
    assert result.exit_code == 0 and "1 anchors match" in result.output, result.output
    path = tmp_path / "receipt.json"
    result = runner.invoke(app, ["ledger", "prove", "3", "--receipt", str(path)])
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text())["anchor"]["tree_size"] == 10
    result = runner.invoke(app, ["chain", "verify-receipt", str(path)])
    assert result.exit_code == 0 and "anchored on chain 31337" in result.output, result.output
    # The standalone checker, with nothing but hashlib, cryptography and a JSON-RPC URL.
    url = chain_settings.chain.url
    if url is not None:
        done = subprocess.run([sys.executable, str(REPO / "docs" / "verify_receipt.py"), str(path), "--chain-url", url],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr
        assert "anchored" in done.stdout


def test_the_embedded_chain_keeps_its_anchors_across_a_restart(settings: Settings, monkeypatch) -> None:
    monkeypatch.setenv("TALLY_CHAIN__ENABLED", "true")
    first = load_settings()
    store = open_store(first)
    ledger = open_ledger(first, store)
    append_notes(ledger, 12)
    anchor_head(Chain(first, store), ledger)
    store.dispose()
    # a new process: nothing held in memory
    code = (
        "from tally.config import load_settings; from tally.store import open_store; "
        "from tally.ledger import open_ledger; from tally.chain import Chain, verify_anchors, anchor_head; "
        "s = load_settings(); st = open_store(s); l = open_ledger(s, st); c = Chain(s, st); "
        "r = verify_anchors(c, l); print(len(r.anchors), r.anchors[-1].size, anchor_head(c, l).anchor)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "13", "None"]


def test_the_chain_tables_migrate_down_and_up(settings: Settings) -> None:
    from alembic import command
    from sqlalchemy import inspect

    from tally.store.migrate import alembic_config, current_revision, head_revision, upgrade

    store = open_store(settings)
    chain_tables = {"chain_contracts", "chain_transactions", "chain_anchors"}
    command.downgrade(alembic_config(store), "0008_rewards_credits")
    assert not set(inspect(store.engine).get_table_names()) & chain_tables
    upgrade(store)
    assert current_revision(store) == head_revision()
    assert chain_tables <= set(inspect(store.engine).get_table_names())
    store.dispose()


def test_a_malformed_anchor_section_is_a_clear_error(opened: tuple[Store, Ledger, Chain]) -> None:
    store, ledger, chain = opened
    append_notes(ledger, 3)
    anchor_head(chain, ledger)
    receipt = anchored_receipt(store, ledger, 1)
    del receipt["anchor"]["contract"]
    with chain.connect() as w3, pytest.raises(ChainError, match="malformed") as caught:
        check_receipt_anchor(receipt, w3)
    assert caught.value.kind == "invalid"
