"""/v1/fine_tuning/jobs (OpenAI style), with live training events over SSE; eval results and leaderboards.

Mount with `app.include_router(factory_routes.router)`. Submitting a job inserts a queued row; worker processes
(`tally worker`, or those `tally serve` starts) run it through the same `tally.factory` service functions the CLI
calls. Status, progress and the cancel flag are in the database and the events in the job's training log, so
these routes follow a job whichever process runs it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import StreamingResponse

from tally.api import policy
from tally.api.state import AppState, app_state
from tally.factory import jobs as factory_jobs
from tally.factory.evaluation import leaderboard
from tally.factory.jobs import (
    TERMINAL,
    JobQueue,
    JobRow,
    admit,
    config_from_request,
    job_events,
    job_object,
    visible_job,
)
from tally.identity import Principal

router = APIRouter(tags=["fine-tuning"])


def runner(state: AppState = Depends(app_state)) -> JobQueue:
    return state.jobs


def _job(state: AppState, job_id: str, who: Principal) -> JobRow:
    with state.store.read() as s:
        return visible_job(s, who, job_id)


@router.post("/v1/fine_tuning/jobs")
def create_job(
    body: dict[str, Any] = Body(...),
    who: Principal = Depends(policy.allow("role", "developer", "owner")),
    jobs: JobQueue = Depends(runner),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    """Validate the config, its limits and the data permissions now (a refusal is a 4xx at once), then queue the job.

    The server picks the output directory (per developer) and the job trains as `who`, whom the manifest credits."""
    cfg = config_from_request(body, state.settings)  # a FactoryError is mapped by its kind (a refusal: 403)
    with state.store.read() as s:
        admit(s, state.settings, who, cfg)
    return jobs.submit(who, cfg)


@router.get("/v1/fine_tuning/jobs")
def list_jobs(
    limit: int = Query(20, ge=1, le=100),
    who: Principal = Depends(policy.allow("key")),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    with state.store.read() as s:
        data = [job_object(r) for r in factory_jobs.list_jobs(s, who, limit)]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/v1/fine_tuning/jobs/{job_id}")
def get_job(
    job_id: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> dict[str, Any]:
    return job_object(_job(state, job_id, who))


@router.post("/v1/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(
    job_id: str, who: Principal = Depends(policy.allow("key")), jobs: JobQueue = Depends(runner),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:  # fmt: skip
    _job(state, job_id, who)
    jobs.cancel(job_id)
    return job_object(_job(state, job_id, who))


@router.get("/v1/fine_tuning/jobs/{job_id}/events", response_model=None)
def events(
    job_id: str, request: Request, stream: bool = Query(False), after: int = Query(0, ge=0),
    who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state),
) -> Any:  # fmt: skip
    """The job's events: a list, or with `stream=true` (or `Accept: text/event-stream`) SSE until the job ends."""
    row = _job(state, job_id, who)
    if not (stream or "text/event-stream" in request.headers.get("accept", "")):
        return {"object": "list", "data": job_events(row, after), "has_more": False}

    async def gen() -> AsyncIterator[str]:
        seen = after
        while True:
            current = _job(state, job_id, who)
            for e in job_events(current, seen):
                seen += 1
                yield f"id: {e['id']}\nevent: {e['data']['type']}\ndata: {json.dumps(e)}\n\n"
            if current.status in TERMINAL:
                yield f"event: end\ndata: {json.dumps(job_object(current))}\n\n"
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)

    return StreamingResponse(gen(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


@router.get("/v1/leaderboards/{datanet}")
def get_leaderboard(
    datanet: str, metric: str = Query("exact_match"), who: Principal = Depends(policy.allow("key")),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:  # fmt: skip
    from tally.datanets.service import get_datanet

    with state.store.read() as s:
        get_datanet(s, who, datanet)  # a private datanet's board is as private as the datanet
        return {"object": "list", "datanet": datanet, "metric": metric, "data": leaderboard(s, datanet, metric)}
