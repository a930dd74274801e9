"""A process killed with SIGKILL in the middle of appends leaves a log that verifies and lost no committed entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from tally.config import Settings
from tally.ledger import decode_entry, open_ledger, verify_ledger
from tally.store import open_store

WRITER = textwrap.dedent(
    """
    import random, sys
    from typing import ClassVar
    from tally.config import load_settings
    from tally.ledger import Event, open_ledger
    from tally.store import open_store

    class Note(Event):
        event_type: ClassVar[str] = "test.note"
        text: str

    settings = load_settings()
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    rng = random.Random(7)
    for i in range(1_000_000):
        with store.transaction() as s:
            done = ledger.append_batch(s, [(Note(text=f"c{i}-{k}"), "writer") for k in range(rng.randint(1, 8))])
        print(done[-1].seq, flush=True)  # printed only after the commit returned
    """
)


def test_sigkill_mid_append_loses_no_committed_entry(settings: Settings) -> None:
    env = {**os.environ, "TALLY_DATA_DIR": str(settings.data_dir)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    committed: list[int] = []
    deadline = time.monotonic() + 120
    while len(committed) < 150 and time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        committed.append(int(line))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed += [int(x) for x in proc.stdout.read().split()]
    assert len(committed) >= 150, "the writer did not get going"

    store = open_store(settings)
    ledger = open_ledger(settings, store)
    report = verify_ledger(ledger)
    assert report.size > max(committed)
    for seq in committed:
        assert decode_entry(ledger.entry(seq)).actor == "writer"
    store.dispose()
