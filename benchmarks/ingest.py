"""Datanet ingest: Alpaca rows validated, hashed, near-duplicate checked and recorded in the ledger.

Uploads N rows (default 100,000) in files of --batch rows each to a fresh datanet, through the same service
function the API and CLI call, three times in one run on one machine:
  full            validation + hashing + exact-duplicate check + MinHash LSH near-duplicate check + ledger
  no_near_dup     the same with the near-duplicate check switched off (setting datanets.near_dup_check)
and reports, for the full run, the share of time spent appending to the ledger (each upload is one ledger
entry, committed in the same transaction). Prints one JSON document, then one summary line.

    python benchmarks/ingest.py [--rows 100000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tally.config import load_settings
from tally.datanets import contribute, service
from tally.identity import Principal, create_account
from tally.ledger import open_ledger, verify_ledger
from tally.store import open_store

SYLLABLES = "ka lo mi ra to ne su vi da pe ru shi mo ta ke no ha fu ri be".split()


def vocabulary(size: int, rng: random.Random) -> list[str]:
    """Made-up words, so rows share a language's spread of words rather than a handful."""
    return ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))) for _ in range(size)]


def make_rows(n: int, seed: int = 0) -> list[bytes]:
    """Alpaca rows about made-up people: one question, a one- to three-sentence answer."""
    rng = random.Random(seed)
    words = vocabulary(5000, rng)
    rows = []
    for i in range(n):
        answer = " ".join(
            f"{rng.choice(words).capitalize()} {' '.join(rng.choices(words, k=rng.randint(6, 14)))}."
            for _ in range(rng.randint(1, 3))
        )
        row = {"instruction": f"What do we know about {rng.choice(words)} person {i}?", "input": "", "output": answer}
        rows.append(json.dumps(row).encode() + b"\n")
    return rows


def ingest(rows: list[bytes], batch: int, near_dup: bool, workdir: Path) -> dict[str, Any]:
    settings = load_settings(data_dir=workdir)
    settings.datanets.near_dup_check = near_dup
    settings.datanets.max_rows_per_day = len(rows) + 1
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "bench", ["owner", "contributor"])
        who = Principal.of(account)
        service.create_datanet(
            s, ledger, who, "bench", kind="instruction", license="CC-BY-4.0", uses=["train"], policy="open",
            max_upload_bytes=64 * 1024 * 1024, max_rows_per_day=len(rows) + 1,
        )  # fmt: skip
    ledger_seconds = 0.0
    real_append = ledger.append_batch

    def timed_append(session, items):  # type: ignore[no-untyped-def]
        nonlocal ledger_seconds
        t = time.perf_counter()
        try:
            return real_append(session, items)
        finally:
            ledger_seconds += time.perf_counter() - t

    ledger.append_batch = timed_append  # type: ignore[method-assign]
    near, near_dups = 0, contribute.NearDups()  # kept across uploads, as the server's runtime keeps it
    t0 = time.perf_counter()
    for start in range(0, len(rows), batch):
        data = b"".join(rows[start : start + batch])
        with store.transaction() as s:
            result = contribute.contribute(
                s, ledger, who, "bench", data, f"part-{start // batch}.jsonl", settings=settings.datanets,
                chain_id=settings.chain_id, near_dups=near_dups,
            )  # fmt: skip
        near += len(result.near_duplicates)
    total = time.perf_counter() - t0
    verify_ledger(ledger)
    store.dispose()
    return {
        "rows": len(rows),
        "seconds": round(total, 2),
        "rows_per_s": round(len(rows) / total),
        "ledger_seconds": round(ledger_seconds, 3),
        "ledger_share": round(ledger_seconds / total, 4),
        "rows_per_s_excluding_ledger": round(len(rows) / (total - ledger_seconds)),
        "near_duplicates_flagged": near,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    rows = make_rows(args.rows)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["full"] = ingest(rows, args.batch, True, Path(tmp) / "full")
        results["no_near_dup"] = ingest(rows, args.batch, False, Path(tmp) / "plain")
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores",
        "batch": args.batch,
        "durability": "SQLite WAL synchronous=FULL, one transaction per upload",
    }
    print(json.dumps(results, indent=2))
    f, p = results["full"], results["no_near_dup"]
    print(
        f"ingest: {f['rows']:,} rows in {f['seconds']} s ({f['rows_per_s']:,}/s) with near-dup and ledger; "
        f"{p['seconds']} s without near-dup; ledger {f['ledger_share'] * 100:.2f}% of the time"
    )


if __name__ == "__main__":
    main()
