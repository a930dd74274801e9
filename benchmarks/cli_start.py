"""How fast model-free CLI commands answer: `tally --help`, `tally ledger head`, `tally accounts list`, against the
bare interpreter's start in the same run (the floor no command can go under). Each command runs --repeats times in
a fresh process against one data directory; reports the median and the minimum wall time. Prints one JSON
document, then one summary line.

    python benchmarks/cli_start.py [--repeats 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

COMMANDS = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "tally --help": [sys.executable, "-m", "tally.cli.main", "--help"],
    "tally ledger head": [sys.executable, "-m", "tally.cli.main", "ledger", "head"],
    "tally accounts list": [sys.executable, "-m", "tally.cli.main", "accounts", "list"],
}


def timed(argv: list[str], env: dict[str, str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, env=env, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        env = {**os.environ, "TALLY_DATA_DIR": str(Path(data) / "data")}
        env.pop("TALLY_CONFIG", None)
        subprocess.run(COMMANDS["tally ledger head"], env=env, check=True, capture_output=True)  # creates the log
        results = {}
        for name, argv in COMMANDS.items():
            times = timed(argv, env, args.repeats)
            results[name] = {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3)}
    floor = results["python -c pass (baseline)"]["median_s"]
    for r in results.values():
        r["over_baseline_s"] = round(r["median_s"] - floor, 3)
    out = {
        "benchmark": "cli_start",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "repeats": args.repeats,
        "results": results,
    }
    print(json.dumps(out, indent=2))
    head = results["tally ledger head"]
    print(
        f"cli_start: tally ledger head {head['median_s']} s median ({head['over_baseline_s']} s over a bare "
        f"interpreter's {floor} s); tally --help {results['tally --help']['median_s']} s"
    )


if __name__ == "__main__":
    main()
