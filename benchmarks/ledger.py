"""Ledger throughput and latency beside pymerkle, in one run on one machine.

Measures durable appends per second (one transaction per append, and batches in one transaction) and the
latency of the root and of an inclusion proof at 10^4, 10^5 and 10^6 entries, for Tally's ledger (SQLite, WAL,
synchronous=FULL, or PostgreSQL with --database-url) and for pymerkle 7's SQLite-backed and in-memory trees fed
the same entry bytes. Prints one JSON document, then one summary line.

    python benchmarks/ledger.py [--sizes 10000,100000,1000000] [--database-url URL] [--out FILE]

--database-url points Tally at another database, which must hold no log yet (a new, empty PostgreSQL database:
`createdb tally_bench`, then `--database-url postgresql+psycopg://USER@HOST/tally_bench`). On PostgreSQL the
batched clock stops after a CHECKPOINT has written the dirty pages out (the counterpart of SQLite's WAL
checkpoint; it needs a superuser or the pg_checkpoint role, and is skipped, and said so, without one).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sqlite3
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from pymerkle import InmemoryTree, SqliteTree
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tally.config import load_settings
from tally.ledger import Event, merkle, open_ledger
from tally.store import Store, open_store


class BenchEvent(Event):
    event_type: ClassVar[str] = "bench.contribution"
    datanet: str
    content_hash: str
    rows: int


def make_event(i: int) -> BenchEvent:
    return BenchEvent(datanet="medical-qa", content_hash=f"{i:064x}", rows=i % 97)


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def pymerkle_root(tree: Any, size: int) -> bytes:
    tree.cache_clear()  # measure the computation, not pymerkle's memo of an earlier call
    return tree.get_root(size)


def pymerkle_proof(tree: Any, index: int, size: int) -> Any:
    tree.cache_clear()
    return tree.prove_inclusion(index + 1, size)  # pymerkle counts leaves from 1


def measure_at(size: int, ledger: Any, ptree: Any, mtree: Any, rng: random.Random) -> dict[str, Any]:
    root = ledger.root(size)
    assert root == ptree.get_root(size) == mtree.get_root(size), "implementations disagree"
    it = iter([rng.randrange(size) for _ in range(10_000)])
    slow_reps = 3 if size >= 10**6 else 7
    row: dict[str, Any] = {
        "root_ms": {
            "tally": median_ms(lambda: ledger.root(size), 200),
            "pymerkle_sqlite": median_ms(lambda: pymerkle_root(ptree, size), slow_reps),
            "pymerkle_memory": median_ms(lambda: pymerkle_root(mtree, size), slow_reps),
        },
        "inclusion_proof_ms": {
            "tally": median_ms(lambda: ledger.inclusion_proof(next(it), size), 200),
            "pymerkle_sqlite": median_ms(lambda: pymerkle_proof(ptree, next(it), size), slow_reps),
            "pymerkle_memory": median_ms(lambda: pymerkle_proof(mtree, next(it), size), slow_reps),
        },
    }
    index = next(it)
    leaf, proof = merkle.leaf_hash(ledger.entry(index)), ledger.inclusion_proof(index, size)
    row["verify_inclusion_ms"] = median_ms(lambda: merkle.verify_inclusion(index, size, leaf, proof, root), 200)
    return {
        k: ({kk: round(vv, 4) for kk, vv in v.items()} if isinstance(v, dict) else round(v, 4)) for k, v in row.items()
    }


class Flush:
    """What ends the batched clock: everything committed is in the database files, not only in the log."""

    def __init__(self, store: Store, settings: Any) -> None:
        self.store, self.wal = store, None
        self.postgres_checkpoint = store.is_postgres
        if store.is_sqlite:
            self.wal = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"), isolation_level=None)
            self.wal.execute("PRAGMA busy_timeout=60000")

    def __call__(self) -> None:
        if self.wal is not None:
            self.wal.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
        elif self.postgres_checkpoint:
            try:
                with self.store.engine.connect() as conn:
                    conn.execute(text("CHECKPOINT"))
            except DBAPIError as exc:  # not a superuser: the clock stops at the commits alone
                print(f"  no CHECKPOINT ({exc.orig}); batched rates exclude writing pages out", flush=True)
                self.postgres_checkpoint = False

    def close(self) -> None:
        if self.wal is not None:
            self.wal.close()


def database_meta(store: Store) -> dict[str, Any]:
    """What the Tally side ran on, and with which durability."""
    if store.is_sqlite:
        return {"database": f"SQLite {sqlite3.sqlite_version}", "durability": "WAL synchronous=FULL"}
    with store.engine.connect() as conn:
        version = conn.execute(text("SHOW server_version")).scalar()
        settings = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in ("fsync", "synchronous_commit")}
    return {"database": f"{store.engine.dialect.name} {version}", "durability": settings}


def run(sizes: list[int], workdir: Path, database_url: str | None) -> dict[str, Any]:
    rng = random.Random(1)
    settings = load_settings(data_dir=workdir / "tally", **({"database_url": database_url} if database_url else {}))
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    if ledger.size() != 1:
        raise SystemExit(f"the database already holds a log of {ledger.size()} entries: give an empty one")
    ptree = SqliteTree(str(workdir / "pymerkle.db"))
    mtree = InmemoryTree(algorithm="sha256")
    results: dict[str, Any] = {"appends_per_s": {}, "at_size": {}}

    # Single durable appends: one committed transaction each.
    n_single = 300
    t = time.perf_counter()
    for i in range(n_single):
        with store.transaction() as s:
            ledger.append(s, make_event(i), actor="bench")
    ours_single = n_single / (time.perf_counter() - t)
    bodies = ledger.entries(0, n_single + 1)
    t = time.perf_counter()
    for body in bodies[:n_single]:
        ptree.append_entry(body)
    pym_single = n_single / (time.perf_counter() - t)
    for body in bodies:
        mtree.append_entry(body)
    if ptree.get_size() < len(bodies):
        ptree.append_entries(bodies[ptree.get_size() :])
    results["appends_per_s"]["single"] = {"tally": round(ours_single), "pymerkle_sqlite": round(pym_single)}

    # Batched durable appends, sustained: each implementation appends the same entries in batches of 10,000, one
    # committed transaction per batch, on its own (never interleaved, so neither's background I/O lands in the
    # other's time). Tally's time ends only after a FULL WAL checkpoint has moved everything into the database
    # file, so the WAL's second write is counted; pymerkle's default journal writes each page once.
    batch = 10_000
    timed = {"tally": [0.0, 0], "pymerkle_sqlite": [0.0, 0], "pymerkle_memory_unbatched": [0.0, 0]}
    flush = Flush(store, settings)
    for target in sizes:
        start = ledger.size()
        # Events are built first: constructing them is the caller's work, and the clock then runs without a gap.
        batches = [
            [(make_event(k), "bench") for k in range(at, min(at + batch, target))] for at in range(start, target, batch)
        ]
        t = time.perf_counter()
        for events in batches:
            with store.transaction() as s:
                ledger.append_batch(s, events)
        flush()
        timed["tally"][0] += time.perf_counter() - t
        timed["tally"][1] += ledger.size() - start
        del batches
        new_bodies = ledger.entries(start, target - start)
        t = time.perf_counter()
        for k in range(0, len(new_bodies), batch):
            ptree.append_entries(new_bodies[k : k + batch], chunksize=batch)
        timed["pymerkle_sqlite"][0] += time.perf_counter() - t
        timed["pymerkle_sqlite"][1] += len(new_bodies)
        t = time.perf_counter()
        for body in new_bodies:
            mtree.append_entry(body)
        timed["pymerkle_memory_unbatched"][0] += time.perf_counter() - t
        timed["pymerkle_memory_unbatched"][1] += len(new_bodies)
        size = ledger.size()
        assert ptree.get_size() == size == mtree.get_size()
        row = measure_at(size, ledger, ptree, mtree, rng)
        results["at_size"][str(size)] = row
        print(f"  size {size:>9,}: {json.dumps(row)}", flush=True)

    results["appends_per_s"]["batched"] = {"batch": batch} | {k: round(n / sec) for k, (sec, n) in timed.items()}
    results["tally_store"] = database_meta(store) | {"batched_clock_includes_checkpoint": flush.wal is not None
                                                     or flush.postgres_checkpoint}  # fmt: skip
    flush.close()
    ptree.close()
    store.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--database-url", help="Tally's database (an empty one); default: SQLite in a temp dir")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = run(sizes, Path(tmp), args.database_url)
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "python": platform.python_version(),
        "durability": f"{results['tally_store']['database']} (tally); pymerkle SqliteTree defaults",
    }
    doc = json.dumps(results, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc + "\n")
    b = results["appends_per_s"]["batched"]
    top = results["at_size"][str(max(sizes))]
    print(
        f"ledger ({results['tally_store']['database']}): batched appends {b['tally']:,}/s "
        f"vs pymerkle sqlite {b['pymerkle_sqlite']:,}/s "
        f"({b['tally'] / b['pymerkle_sqlite']:.2f}x); at {max(sizes):,} entries root {top['root_ms']['tally']:.3f} ms "
        f"(pymerkle sqlite {top['root_ms']['pymerkle_sqlite']:.1f} ms), inclusion proof "
        f"{top['inclusion_proof_ms']['tally']:.3f} ms "
        f"(pymerkle sqlite {top['inclusion_proof_ms']['pymerkle_sqlite']:.1f} ms)"
    )


if __name__ == "__main__":
    main()
