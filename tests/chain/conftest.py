"""Chain fixtures: a local anvil node."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tally.chain.anvil import AnvilNode


@pytest.fixture
def anvil_node() -> Iterator[AnvilNode]:
    """A fresh anvil on a free port (chain id 31337), stopped after the test. Fails when anvil is not installed."""
    with AnvilNode() as node:
        yield node
