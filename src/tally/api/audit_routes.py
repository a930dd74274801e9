"""GET /v1/audit: the state audit (see docs/audit.md), for admins.

The answer is the report whether or not the tables agree with the ledger: `clean`, the entries read and events
replayed, the rows checked per table, and the first divergence (table, key, field, the value the events give, the
value the table holds, the entry) or null. The audit reads the whole log, so it runs on a worker thread."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from tally.answers import audit as state
from tally.api import policy
from tally.api.state import AppState, app_state

router = APIRouter(tags=["audit"])


@router.get("/v1/audit", dependencies=[Depends(policy.allow("admin"))])
async def audit(runtime: AppState = Depends(app_state)) -> dict[str, Any]:
    """Replay the ledger and compare every table its events determine; the report, with the first divergence."""
    report = await run_in_threadpool(state.audit, runtime.store, runtime.ledger)
    return report.as_json()
