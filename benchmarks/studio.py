"""Studio page timings: every page's server time on a database with 10^5 ledger entries and 10^4 datanet rows.

The studio must stay fast as the data grows, so each page is timed twice in the same run: on a small database (the
baseline: a datanet of 100 rows, a few hundred entries) and on the large one (10,000 rows in 10 contributions from
two contributors, half accepted, two snapshots, the ledger padded to 100,000 entries). Requests go through the app
in-process (Starlette's test client), signed in as the datanet's owner, so the time is the server's: routing,
access policy, queries and rendering, no network. Goal: p95 <= 100 ms for every page on the large database.

Pages about one trained adapter, training run, answer or closed epoch (a run's page, an adapter's page, an answer's
record, a payout's claim) are not here: this database has none of them.

    .venv/bin/python benchmarks/studio.py [--entries 100000] [--rows 10000] [--repeats 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

PAGES = [
    "/studio/",
    "/studio/datanets",
    "/studio/datanets?q=bench",
    "/studio/datanets/-/new",
    "/studio/datanets/bench",
    "/studio/datanets/bench?page=last",
    "/studio/datanets/bench?status=accepted&page=mid",
    "/studio/datanets/bench/contributors",
    "/studio/datanets/bench/contribute",
    "/studio/datanets/bench/review",
    "/studio/datanets/bench/review?page=mid",
    "/studio/datanets/bench/snapshots",
    "/studio/datanets/bench/diff?from=v1&to=v2",
    "/studio/datanets/bench/access",
    "/studio/ledger",
    "/studio/ledger?type=datanet.contribution_submitted",
    "/studio/ledger/entries/mid",
    "/studio/ledger/entries/mid/receipt.json",
    "/studio/ledger/anchors",
    "/studio/rewards",
    "/studio/rewards/epochs",
    "/studio/factory",
    "/studio/factory/leaderboard",
    "/studio/models",
    "/studio/playground",
]
PAGE_ROWS = 50  # the datanet pages' page size, for the "page=last" and "page=mid" paths


def _build(data_dir: Path, entries: int, rows: int) -> str:
    """A database of `rows` datanet rows and `entries` ledger entries; returns the owner's API key."""
    os.environ["TALLY_DATA_DIR"] = str(data_dir)
    from tally.config import load_settings
    from tally.datanets import contribute, review, service, snapshots
    from tally.datanets.tables import ContributionRow
    from tally.identity import Principal, create_account, create_api_key
    from tally.ledger import Event, open_ledger
    from tally.store import open_store

    class Padding(Event):  # stands for the entries other parts would have written
        event_type: ClassVar[str] = "bench.padding"
        n: int

    settings = load_settings()
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        owner, _ = create_account(s, ledger, "bench-owner", ["owner", "contributor"])
        _, key = create_api_key(s, ledger, owner)
        other, _ = create_account(s, ledger, "bench-contributor", ["contributor"])
        who = Principal.of(owner)
        service.create_datanet(
            s, ledger, who, "bench", kind="instruction", license="MIT", uses=["train", "rag"],
            policy="owner-reviewed", max_upload_bytes=64 * 1024 * 1024, max_rows_per_day=10 * rows,
        )  # fmt: skip
    contributor = Principal.of(other)
    per_upload = max(1, rows // 10)
    for k in range(10):
        data = "".join(
            json.dumps({"instruction": f"Question {k}-{i} about bench item {i}?", "output": f"Answer {i} of set {k}."})
            + "\n"
            for i in range(per_upload)
        ).encode()
        with store.transaction() as s:
            contribute.contribute(
                s, ledger, contributor if k % 2 else who, "bench", data, f"part-{k}.jsonl", settings=settings.datanets,
                chain_id=settings.chain_id,
            )  # fmt: skip
    with store.transaction() as s:
        snapshots.create_snapshot(s, ledger, who, "bench")
        from sqlalchemy import select

        theirs = s.execute(select(ContributionRow.id).where(ContributionRow.contributor == other.address)).scalars()
        for contribution in list(theirs)[:3]:
            review.review(s, ledger, who, "bench", decision="accept", contribution=contribution)
        snapshots.create_snapshot(s, ledger, who, "bench")
    size = ledger.size()
    while size < entries:
        with store.transaction() as s:
            ledger.append_batch(s, [(Padding(n=size + i), "bench") for i in range(min(10_000, entries - size))])
        size = ledger.size()
    ledger.checkpoint()
    store.dispose()
    return str(key)


def _time_pages(data_dir: Path, key: str, rows: int, repeats: int) -> dict[str, dict[str, float]]:
    os.environ["TALLY_DATA_DIR"] = str(data_dir)
    from fastapi.testclient import TestClient

    from tally.api import create_app
    from tally.config import load_settings

    pages_last = max(1, (rows + PAGE_ROWS - 1) // PAGE_ROWS)
    fill = {"last": str(pages_last), "mid": str(max(1, pages_last // 2))}
    out: dict[str, dict[str, float]] = {}
    with TestClient(create_app(load_settings()), base_url="https://testserver") as client:
        form = client.get("/studio/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        if csrf is None:
            raise RuntimeError("the sign-in page has no CSRF field")
        signed = client.post("/studio/sign-in", data={"api_key": key, "csrf": csrf.group(1)}, follow_redirects=False)
        if signed.status_code not in (200, 303):
            raise RuntimeError(f"sign-in failed: {signed.status_code} {signed.text[:300]}")
        entries = int(client.get("/health").json()["ledger_size"])
        for page in PAGES:
            path = re.sub(r"page=(last|mid)", lambda m: f"page={fill[m.group(1)]}", page)
            path = path.replace("/entries/mid", f"/entries/{entries // 2}")
            times = []
            for i in range(repeats + 2):
                t0 = time.perf_counter()
                r = client.get(path)
                elapsed = (time.perf_counter() - t0) * 1000
                if r.status_code != 200:
                    raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")
                if i >= 2:  # the first two warm the caches
                    times.append(elapsed)
            times.sort()
            out[page] = {
                "p50_ms": round(statistics.median(times), 1),
                "p95_ms": round(times[min(len(times) - 1, int(0.95 * len(times)))], 1),
                "max_ms": round(times[-1], 1),
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000, help="ledger entries in the large database")
    parser.add_argument("--rows", type=int, default=10_000, help="datanet rows in the large database")
    parser.add_argument("--repeats", type=int, default=30, help="timed requests per page")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    os.environ["TALLY_CHAIN__ENABLED"] = "false"
    os.environ["TALLY_DATANETS__NEAR_DUP_CHECK"] = "false"  # setup speed only: pages never read signatures
    os.environ["TALLY_SERVER__RATE_LIMIT_PER_MINUTE"] = "0"
    os.environ.pop("TALLY_CONFIG", None)
    os.environ.pop("TALLY_DATABASE_URL", None)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="tally-studio-bench-") as tmp:
        t0 = time.perf_counter()
        small_key = _build(Path(tmp) / "small", entries=0, rows=100)
        large_key = _build(Path(tmp) / "large", entries=args.entries, rows=args.rows)
        setup_s = time.perf_counter() - t0
        small = _time_pages(Path(tmp) / "small", small_key, 100, args.repeats)
        large = _time_pages(Path(tmp) / "large", large_key, args.rows, args.repeats)
    pages = {
        page: {
            "small": small[page],
            "large": large[page],
            "p95_ratio_large_to_small": round(large[page]["p95_ms"] / max(small[page]["p95_ms"], 0.1), 2),
        }
        for page in PAGES
    }
    worst = max(PAGES, key=lambda p: large[p]["p95_ms"])
    over = [p for p in PAGES if large[p]["p95_ms"] > 100]
    result: dict[str, Any] = {
        "benchmark": "studio",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_1m": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "large": {"ledger_entries": args.entries, "datanet_rows": args.rows},
        "setup_seconds": round(setup_s, 1),
        "repeats": args.repeats,
        "pages": pages,
        "worst_page": worst,
        "pages_over_100ms_p95": over,
    }
    doc = json.dumps(result, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc + "\n")
    print(
        f"studio: {len(PAGES)} pages, {args.entries:,} entries and {args.rows:,} rows: worst p95 "
        f"{large[worst]['p95_ms']} ms ({worst}, {pages[worst]['p95_ratio_large_to_small']}x the small database); "
        f"{len(over)} pages over 100 ms (goal: none); load average {load_before:.1f}"
    )


if __name__ == "__main__":
    main()
