"""Every route of the OpenAPI schema, called with inputs generated from it (schemathesis + hypothesis), anonymous
and as an admin: no 500, no crash, and nothing half-written (the ledger verifies afterwards).

A bounded example count keeps this in `make test`; raise TALLY_FUZZ_EXAMPLES for a longer run.
"""

from __future__ import annotations

import json
import os
from collections import Counter

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from sqlalchemy import text

from tally.api import create_app
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import verify_ledger

EXAMPLES = int(os.environ.get("TALLY_FUZZ_EXAMPLES", "6"))


@pytest.mark.parametrize("who", ["anonymous", "admin"])
def test_no_route_answers_500_to_generated_input(settings: Settings, who: str) -> None:
    import schemathesis

    # the fuzzer is one client sending hundreds of requests: the rate limit is not what is tested here
    server = settings.server.model_copy(update={"rate_limit_per_minute": 1_000_000, "rate_limit_burst": 1_000_000})
    app = create_app(settings.model_copy(update={"server": server}))
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    with TestClient(app, raise_server_exceptions=False):  # runs the lifespan: the runtime the routes use
        runtime = app.state.runtime
        headers = {}
        if who == "admin":
            with runtime.store.transaction() as s:
                account, _ = create_account(s, runtime.ledger, "root", ["admin"])
                _, token = create_api_key(s, runtime.ledger, account)
            headers = {"Authorization": f"Bearer {token}"}
        schema = schemathesis.openapi.from_asgi("/openapi.json", app)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) > 30

        for operation in operations:

            @examples(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            @given(operation.as_strategy())
            def call(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                statuses[response.status_code] += 1
                # 503: inference without an engine (this app has none), the intended answer
                if response.status_code >= 500 and response.status_code != 503:
                    failures.append(f"{case.operation.label}: {response.status_code} {response.text[:300]}")

            call()
        assert failures == [], "\n".join(failures)
        report = verify_ledger(runtime.ledger)
        assert report.size == runtime.ledger.size()
        # nothing half-written: each table the fuzzed routes write holds one row per ledger event that made one
        entries = [json.loads(e) for e in runtime.ledger.entries(0, runtime.ledger.size())]
        made = Counter(e["type"] for e in entries)
        with runtime.store.read() as s:
            for table, event in (
                ("accounts", "identity.account_created"),
                ("api_keys", "identity.key_created"),
                ("datanets", "datanet.created"),
                ("contributions", "datanet.contribution_submitted"),
                ("snapshots", "datanet.snapshot_created"),
                ("access_requests", "datanet.access_requested"),
            ):
                rows = s.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one()
                assert rows == made[event], f"{table}: {rows} rows, {made[event]} {event} entries"
    assert sum(statuses.values()) >= len(operations)
