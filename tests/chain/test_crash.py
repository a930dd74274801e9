"""A process killed between signing, sending and seeing the receipt of an anchor leaves exactly one anchor."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
from sqlalchemy import select
from tests.conftest import append_notes

from tally.chain import Chain, anchor_head, verify_anchors
from tally.chain.anchor import chain_anchors
from tally.chain.tables import TransactionRow
from tally.config import Settings
from tally.ledger import open_ledger
from tally.store import open_store

# Runs `tally chain anchor`'s service with one step replaced by SIGKILL to itself.
KILLED_AT = """
import os, signal
from tally.chain import Chain, anchor_head
from tally.chain import client
from tally.config import load_settings
from tally.ledger import open_ledger
from tally.store import open_store

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(client.Chain, "{step}", die)
settings = load_settings()
store = open_store(settings)
anchor_head(Chain(settings, store), open_ledger(settings, store))
"""


@pytest.mark.parametrize("step", ["_broadcast", "_await"])  # killed before sending / after sending, before receipt
def test_a_kill_around_sending_leads_to_exactly_one_anchor(chain_settings: Settings, step: str) -> None:
    store = open_store(chain_settings)
    ledger = open_ledger(chain_settings, store)
    append_notes(ledger, 20)
    chain = Chain(chain_settings, store)
    with chain.connect() as w3:
        chain.deploy(w3)
    done = subprocess.run([sys.executable, "-c", KILLED_AT.format(step=step)], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    with store.read() as s:
        statuses = s.execute(select(TransactionRow.status).where(TransactionRow.purpose.like("anchor:%"))).all()
    assert [r.status for r in statuses] == ["pending"]  # signed and journaled before the kill

    restarted = Chain(chain_settings, store)  # a new process's view: nothing in memory
    outcome = anchor_head(restarted, ledger)
    assert outcome.anchor is None and outcome.anchored_size == 21  # the journaled transaction, not a second one
    with store.read() as s:
        statuses = s.execute(select(TransactionRow.status).where(TransactionRow.purpose.like("anchor:%"))).all()
    assert [r.status for r in statuses] == ["mined"]
    with restarted.connect() as w3:
        assert [a.size for a in chain_anchors(restarted, w3, ledger.origin)] == [21]
    assert len(verify_anchors(restarted, ledger).anchors) == 1
    store.dispose()
