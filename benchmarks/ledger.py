"""Ledger throughput and latency beside pymerkle, in one run on one machine.

Measures durable appends per second (one transaction per append, and batches in one transaction) and the
latency of the root and of an inclusion proof at 10^4, 10^5 and 10^6 entries, for Tally's ledger (SQLite, WAL,
synchronous=FULL) and for pymerkle 7's SQLite-backed and in-memory trees fed the same entry bytes.
Prints one JSON document, then one summary line.

    python benchmarks/ledger.py [--sizes 10000,100000,1000000] [--out FILE]
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

from tally.config import load_settings
from tally.ledger import Event, merkle, open_ledger
from tally.store import open_store


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


def run(sizes: list[int], workdir: Path) -> dict[str, Any]:
    rng = random.Random(1)
    settings = load_settings(data_dir=workdir / "tally")
    store = open_store(settings)
    ledger = open_ledger(settings, store)
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
    wal = sqlite3.connect(settings.db_url.removeprefix("sqlite:///"), isolation_level=None)
    wal.execute("PRAGMA busy_timeout=60000")
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
        wal.execute("PRAGMA wal_checkpoint(FULL)").fetchall()
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
    wal.close()
    ptree.close()
    store.dispose()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        results = run(sizes, Path(tmp))
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} cores",
        "python": platform.python_version(),
        "durability": "SQLite WAL synchronous=FULL (tally); pymerkle SqliteTree defaults",
    }
    doc = json.dumps(results, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc + "\n")
    b = results["appends_per_s"]["batched"]
    top = results["at_size"][str(max(sizes))]
    print(
        f"ledger: batched appends {b['tally']:,}/s vs pymerkle sqlite {b['pymerkle_sqlite']:,}/s "
        f"({b['tally'] / b['pymerkle_sqlite']:.2f}x); at {max(sizes):,} entries root {top['root_ms']['tally']:.3f} ms "
        f"(pymerkle sqlite {top['root_ms']['pymerkle_sqlite']:.1f} ms), inclusion proof "
        f"{top['inclusion_proof_ms']['tally']:.3f} ms "
        f"(pymerkle sqlite {top['inclusion_proof_ms']['pymerkle_sqlite']:.1f} ms)"
    )


if __name__ == "__main__":
    main()
