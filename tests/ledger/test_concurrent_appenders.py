"""Two processes appending to one ledger at once keep one consistent log.

Each process appends its own numbered events in batches of random sizes, each batch its own transaction, as fast
as it can. On SQLite the appenders take turns on the database's write lock; on PostgreSQL (tests/postgres/run.sh)
on the advisory write lock. Either way the log must come out as one gap-free sequence that verifies, holding
every event of both processes exactly once, each at the sequence number its append returned.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.conftest import TEST_POSTGRES

from tally.config import Settings, load_settings
from tally.ledger import decode_entry, open_ledger, verify_ledger
from tally.store import open_store

WORKERS = 2
APPENDS = 300  # per worker
TILE_HEIGHT = 3  # small tiles: many bundles cut at tile boundaries and many stored nodes

WORKER = r"""
import json, random, sys, time
from pathlib import Path
from typing import ClassVar

from tally.config import load_settings
from tally.ledger import Event, open_ledger
from tally.store import open_store


class Hammer(Event):
    event_type: ClassVar[str] = "test.hammer"
    worker: str
    i: int


name, total, go = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3])
rng = random.Random(name)
settings = load_settings()
store = open_store(settings)
ledger = open_ledger(settings, store)
print("ready", flush=True)
while not go.exists():
    time.sleep(0.005)
seqs, i = [], 0
while i < total:
    n = min(rng.randint(1, 12), total - i)
    with store.transaction() as session:
        done = ledger.append_batch(session, [(Hammer(worker=name, i=i + k), name) for k in range(n)])
    seqs.extend(a.seq for a in done)
    i += n
    time.sleep(rng.random() / 1000)  # a breath between batches, as between requests: SQLite's waiter gets its turn
store.dispose()
print(json.dumps(seqs), flush=True)
"""


def test_two_processes_appending_at_once_keep_one_consistent_log(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_LEDGER__TILE_HEIGHT", str(TILE_HEIGHT))
    settings = load_settings()
    store = open_store(settings)  # migrated and the log created before the workers start
    ledger = open_ledger(settings, store)
    assert ledger.size() == 1 and ledger.tile_height == TILE_HEIGHT
    assert (settings.db_url.startswith("postgresql")) == (TEST_POSTGRES is not None)

    go = tmp_path / "go"
    names = [f"w{k}" for k in range(WORKERS)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, name, str(APPENDS), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    ]
    try:
        for p in procs:  # both opened the store: start them together
            assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr and p.stderr.read()
        started = time.monotonic()
        go.touch()
        outputs = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    elapsed = time.monotonic() - started
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    reported = {name: json.loads(out.strip().splitlines()[-1]) for name, (out, _) in zip(names, outputs, strict=True)}

    total = 1 + WORKERS * APPENDS
    assert ledger.size() == total
    entries = [decode_entry(body) for body in ledger.entries(0, total + 10)]
    assert [e.seq for e in entries] == list(range(total))  # every seq once, in order, no gaps
    assert entries[0].type == "ledger.created"
    by_worker: dict[str, list[tuple[int, int]]] = {name: [] for name in names}
    for e in entries[1:]:
        assert e.type == "test.hammer" and e.actor == e.payload["worker"]
        by_worker[e.payload["worker"]].append((e.payload["i"], e.seq))
    assert [e.ts for e in entries] == sorted(e.ts for e in entries)  # commit order is log order
    for name in names:
        got = by_worker[name]
        assert [i for i, _ in got] == list(range(APPENDS))  # all of it, once, in the order it was appended
        assert [seq for _, seq in got] == reported[name]  # at the sequence numbers its appends returned

    ledger.checkpoint()
    report = verify_ledger(ledger)
    assert report.size == total
    switches = sum(1 for a, b in itertools.pairwise(entries[1:]) if a.actor != b.actor)
    assert switches >= 2  # the appends really overlapped in time: one process's ran between the other's
    print(f"{WORKERS} x {APPENDS} appends in {elapsed:.2f} s on {store.engine.dialect.name}, {switches} switches")
    store.dispose()
