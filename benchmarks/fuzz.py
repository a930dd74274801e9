"""A longer fuzzing run than `make test` does: every route of the OpenAPI schema with inputs generated from it
(schemathesis + hypothesis), anonymous, as a consumer and as an admin, against a fresh data directory; then the
ledger is verified. Reports the calls, the statuses, the failures (a 5xx other than the 503 of a server without an
engine) and the time. Prints one JSON document, then one summary line.

    python benchmarks/fuzz.py [--examples 100]
"""

from __future__ import annotations

import argparse
import atexit
import json
import platform
import shutil
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def _fuzz(operation: Any, headers: dict[str, str], examples: int, statuses: Counter[int], failures: list[str]) -> Any:
    """A hypothesis test calling one route with one caller's headers."""
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hypothesis_settings

    @hypothesis_settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(operation.as_strategy())
    def call(case: Any) -> None:
        response = case.call(headers=headers)
        statuses[response.status_code] += 1
        if response.status_code >= 500 and response.status_code != 503:  # 503: no engine in this app
            failures.append(f"{case.operation.label}: {response.status_code} {response.text[:200]}")

    return call


def run(examples: int) -> dict[str, Any]:
    import schemathesis
    from fastapi.testclient import TestClient

    from tally.api import create_app
    from tally.config import load_settings
    from tally.identity import create_account, create_api_key
    from tally.ledger import verify_ledger

    data = Path(tempfile.mkdtemp(prefix="tally-fuzz-"))
    atexit.register(shutil.rmtree, data, ignore_errors=True)
    settings = load_settings(data_dir=data)
    server = settings.server.model_copy(update={"rate_limit_per_minute": 10**9, "rate_limit_burst": 10**9})
    app = create_app(settings.model_copy(update={"server": server}))
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    start = time.perf_counter()
    with TestClient(app, raise_server_exceptions=False):
        runtime = app.state.runtime
        callers: dict[str, dict[str, str]] = {"anonymous": {}}
        with runtime.store.transaction() as s:
            for name, roles in (("admin", ["admin"]), ("consumer", ["consumer"])):
                account, _ = create_account(s, runtime.ledger, name, roles)
                _, token = create_api_key(s, runtime.ledger, account)
                callers[name] = {"Authorization": f"Bearer {token}"}
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        for headers in callers.values():
            for operation in operations:
                _fuzz(operation, headers, examples, statuses, failures)()
        report = verify_ledger(runtime.ledger)
    seconds = time.perf_counter() - start
    return {
        "benchmark": "fuzz",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "examples_per_operation": examples,
        "operations": len(operations),
        "callers": sorted(callers),
        "calls": sum(statuses.values()),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "failures": failures[:50],
        "failure_count": len(failures),
        "ledger_entries_verified": report.size,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="generated inputs per route and caller")
    args = parser.parse_args()
    out = run(args.examples)
    print(json.dumps(out, indent=2))
    print(
        f"fuzz: {out['calls']} calls over {out['operations']} routes x {len(out['callers'])} callers, "
        f"{out['failure_count']} failures, ledger of {out['ledger_entries_verified']} entries verified, "
        f"{out['seconds']} s"
    )


if __name__ == "__main__":
    main()
