"/v1/datanets: create, contribute, review, snapshot, diff, export, access requests."

from __future__ import annotations

import dataclasses
import json
from typing import Any

from fastapi import APIRouter, Depends, File, Form, Query, UploadFile
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tally.api import policy
from tally.api.errors import ApiError
from tally.api.limits import INT64_MAX, upload_ceiling
from tally.api.state import AppState, app_state
from tally.datanets import access, contribute, review, service, snapshots
from tally.identity import Principal

router = APIRouter(prefix="/v1/datanets", tags=["datanets"])


class DatanetIn(BaseModel):
    name: str = Field(description="slug: a-z, 0-9 and '-'")
    kind: str = Field(description="instruction | chat | documents")
    license: str = Field(description="SPDX expression")
    uses: list[str] = Field(description="permitted uses: train, rag, eval, commercial")
    description: str = ""
    tags: list[str] = []
    visibility: str = "public"
    policy: str = "owner-reviewed"
    max_upload_bytes: int | None = Field(None, ge=1, description="at most the server's upload cap (docs/security.md)")
    max_rows_per_day: int | None = Field(None, ge=1, le=INT64_MAX)


class ReviewIn(BaseModel):
    decision: str = Field(description="accept | reject")
    reason: str = ""
    contribution: str | None = None
    rows: list[str] | None = None


class MemberIn(BaseModel):
    address: str


class AccessIn(BaseModel):
    uses: list[str]
    purpose: str


class DecisionIn(BaseModel):
    reason: str = ""


def _json(obj: Any) -> Any:
    return dataclasses.asdict(obj)


@router.post("", status_code=201)
def create(
    body: DatanetIn, who: Principal = Depends(policy.allow("role", "owner")), state: AppState = Depends(app_state)
) -> Any:
    limits = state.settings.datanets
    ceiling = upload_ceiling(state.settings)
    if body.max_upload_bytes is not None and body.max_upload_bytes > ceiling:
        raise ApiError(400, f"max_upload_bytes: at most {ceiling}, the server's upload cap", param="max_upload_bytes")
    with state.store.transaction() as s:
        dn = service.create_datanet(
            s, state.ledger, who, body.name, kind=body.kind, license=body.license, uses=body.uses,
            description=body.description, tags=body.tags, visibility=body.visibility, policy=body.policy,
            max_upload_bytes=body.max_upload_bytes or limits.max_upload_bytes,
            max_rows_per_day=body.max_rows_per_day or limits.max_rows_per_day,
        )  # fmt: skip
    return _json(dn)


@router.get("")
def list_all(
    q: str = Query(
        "",
        max_length=service.MAX_QUERY_CHARS,
        description="words the name, description, tags or license must all contain",
    ),
    who: Principal = Depends(policy.allow("key")),
    state: AppState = Depends(app_state),
) -> Any:
    with state.store.read() as s:
        return {"data": [_json(d) for d in service.search_datanets(s, who, q)]}


@router.get("/{slug}")
def show(slug: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)) -> Any:
    with state.store.read() as s:
        dn = service.get_datanet(s, who, slug)
        snaps = snapshots.list_snapshots(s, who, slug)
    return {**_json(dn), "snapshots": [_json(x) for x in snaps]}


@router.post("/{slug}/members", status_code=201)
def invite(
    slug: str,
    body: MemberIn,
    who: Principal = Depends(policy.allow("datanet_owner")),
    state: AppState = Depends(app_state),
) -> Any:
    with state.store.transaction() as s:
        service.invite_member(s, state.ledger, who, slug, body.address)
    return {"datanet": slug, "member": body.address}


@router.post("/{slug}/contributions", status_code=201)
async def upload(
    slug: str,
    file: UploadFile = File(...),
    format: str | None = Form(None),
    signature: str | None = Form(None),
    nonce: int | None = Form(None),
    drop_duplicates: bool = Form(
        False, description="leave out rows that repeat an earlier line or a stored row (listed in `dropped`)"
    ),
    who: Principal = Depends(policy.allow("role", "contributor", "owner")),
    state: AppState = Depends(app_state),
) -> Any:
    data = await file.read()

    def parse_and_store() -> Any:
        with state.store.transaction() as s:
            return contribute.contribute(
                s, state.ledger, who, slug, data, file.filename or "upload", settings=state.settings.datanets,
                chain_id=state.settings.chain_id, format=format, signature=signature, nonce=nonce,
                near_dups=state.near_dups, drop_duplicates=drop_duplicates,
            )  # fmt: skip

    # parsing, validation and dedup are CPU-bound: on a worker thread one large upload cannot stall the event loop
    return _json(await run_in_threadpool(parse_and_store))


@router.get("/{slug}/rows")
def rows(
    slug: str,
    status: str | None = Query(None, description="pending | accepted | rejected"),
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    who: Principal = Depends(policy.allow("key")),
    state: AppState = Depends(app_state),
) -> Any:
    with state.store.read() as s:
        return {"data": service.list_rows(s, who, slug, status=status, limit=limit, offset=offset)}


@router.post("/{slug}/review")
def review_rows(
    slug: str,
    body: ReviewIn,
    who: Principal = Depends(policy.allow("datanet_owner")),
    state: AppState = Depends(app_state),
) -> Any:
    with state.store.transaction() as s:
        changed = review.review(
            s, state.ledger, who, slug, decision=body.decision, reason=body.reason, contribution=body.contribution,
            rows=body.rows,
        )  # fmt: skip
    return {"datanet": slug, "decision": body.decision, "changed": changed}


@router.post("/{slug}/snapshots", status_code=201)
def snapshot(
    slug: str, who: Principal = Depends(policy.allow("datanet_owner")), state: AppState = Depends(app_state)
) -> Any:
    with state.store.transaction() as s:
        return _json(snapshots.create_snapshot(s, state.ledger, who, slug))


@router.get("/{slug}/snapshots/{snapshot}")
def get_snapshot(
    slug: str, snapshot: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> Any:
    with state.store.read() as s:
        return _json(snapshots.get_snapshot(s, who, slug, snapshot))


@router.get("/{slug}/diff")
def diff(
    slug: str,
    from_: str = Query(..., alias="from"),
    to: str = Query("latest"),
    who: Principal = Depends(policy.allow("key")),
    state: AppState = Depends(app_state),
) -> Any:
    with state.store.read() as s:
        return snapshots.diff_snapshots(s, who, slug, from_, to)


@router.get("/{slug}/snapshots/{snapshot}/data.jsonl")
def export_data(
    slug: str, snapshot: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> StreamingResponse:
    with state.store.read() as s:
        _, _, rows = snapshots.export_rows(s, who, slug, snapshot)
    lines = [json.dumps(content, ensure_ascii=False) + "\n" for content in rows]
    return StreamingResponse(iter(lines), media_type="application/jsonl")


@router.get("/{slug}/snapshots/{snapshot}/README.md")
def export_card(
    slug: str, snapshot: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> Any:
    with state.store.read() as s:
        dn = service.get_datanet(s, who, slug)
        snap = snapshots.get_snapshot(s, who, slug, snapshot)
    return PlainTextResponse(snapshots.dataset_card(dn, snap), media_type="text/markdown")


@router.post("/{slug}/access-requests", status_code=201)
def request_access(
    slug: str, body: AccessIn, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> Any:
    with state.store.transaction() as s:
        return _json(access.request_access(s, state.ledger, who, slug, uses=body.uses, purpose=body.purpose))


@router.get("/{slug}/access-requests")
def list_requests(
    slug: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)
) -> Any:
    with state.store.read() as s:
        return {"data": [_json(r) for r in access.list_access_requests(s, who, slug)]}


@router.post("/{slug}/access-requests/{request_id}/{decision}")
def decide(
    slug: str,
    request_id: int,
    decision: str,
    body: DecisionIn,
    who: Principal = Depends(policy.allow("datanet_owner")),
    state: AppState = Depends(app_state),
) -> Any:
    if decision not in ("grant", "deny"):
        raise ApiError(404, f"no action {decision!r}: use grant or deny", type_="not_found_error")
    with state.store.transaction() as s:
        result = access.decide_access(
            s, state.ledger, who, slug, request_id, grant=decision == "grant", reason=body.reason
        )
    return _json(result)
