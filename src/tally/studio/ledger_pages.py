"""Ledger pages: entries newest first, paged and filtered by event type; the latest signed checkpoint; an inclusion
proof for any entry, checked in the browser (WebCrypto SHA-256, RFC 9162) against the signed checkpoint; the
on-chain anchors. The ledger is public: every page is open to anyone."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tally.answers import load_event_types
from tally.chain import chain_status, recorded_anchors
from tally.config.errors import TallyError
from tally.ledger import decode_entry, merkle
from tally.ledger.events import registered_types
from tally.studio.pages import View, page, redirect, render, status_of

router = APIRouter()

NAV = "ledger"
MAX_SEQ = 2**62


def _event_types() -> list[str]:
    load_event_types()  # every package's types are known (imports are cached by Python after the first)
    return sorted({name for name, _ in registered_types()})


def _summary(body: bytes) -> dict[str, Any]:
    entry = decode_entry(body)
    payload = json.dumps(entry.payload, ensure_ascii=False, sort_keys=True)
    return {"seq": entry.seq, "type": entry.type, "v": entry.v, "ts": entry.ts, "actor": entry.actor,
            "payload": payload if len(payload) <= 240 else payload[:240] + "…"}  # fmt: skip


@router.get("/ledger")
def ledger_page(
    request: Request,
    type: str = Query("", max_length=96),
    before: int | None = Query(None, ge=0, le=MAX_SEQ),
    view: View = Depends(page("anonymous")),
) -> Response:
    ledger = view.runtime.ledger
    size = view.page_size
    types = _event_types()
    if type and type not in types:
        raise TallyError(f"type: no event type {type!r}; choose one of the list", param="type")
    with view.runtime.store.read() as s:
        total = ledger.size(s)
        bodies = ledger.recent(event_type=type or None, before=before, limit=size + 1, session=s)
        checkpoint = ledger.latest_checkpoint(s)
    entries = [_summary(b) for b in bodies[:size]]
    more = len(bodies) > size
    args = {"type": type} if type else {}
    return render(
        request, view, "ledger/index.html", nav=NAV, entries=entries, total=total, types=types, type=type,
        checkpoint=checkpoint, root=merkle.b64(checkpoint.root) if checkpoint else None,
        verifier_key=ledger.signer.verifier.encode(), origin=ledger.origin,
        next_args=urlencode({**args, "before": entries[-1]["seq"]}) if more else None,
        first_args=urlencode(args) if before is not None else None,
    )  # fmt: skip


@router.get("/ledger/entries")
def goto_entry(
    request: Request, seq: int = Query(..., ge=0, le=MAX_SEQ), view: View = Depends(page("anonymous"))
) -> Response:
    return redirect(request, f"/ledger/entries/{seq}")


@router.get("/ledger/entries/{seq}")
def entry_page(request: Request, seq: int, view: View = Depends(page("anonymous"))) -> Response:
    if not 0 <= seq <= MAX_SEQ:
        raise TallyError(f"seq: {seq} is not an entry number", param="seq", kind="not_found")
    ledger = view.runtime.ledger
    body = ledger.entry(seq)  # a missing entry: not found, naming the log's size
    entry = decode_entry(body)
    return render(
        request, view, "ledger/entry.html", nav=NAV, entry=entry, seq=seq,
        pretty=json.dumps(json.loads(body), indent=2, ensure_ascii=False, sort_keys=True),
        leaf_hash=merkle.leaf_hash(body).hex(), verifier_key=ledger.signer.verifier.encode(),
    )  # fmt: skip


@router.get("/ledger/entries/{seq}/receipt.json")
def receipt(seq: int, view: View = Depends(page("anonymous"))) -> Response:
    """What the entry page's check needs: the entry's bytes, its inclusion proof and a signed checkpoint that
    contains it (the API's receipt, /v1/ledger/entries/{seq}/receipt)."""
    from tally.chain import anchored_receipt

    ledger = view.runtime.ledger
    if not 0 <= seq < ledger.size():
        return JSONResponse({"error": f"no ledger entry {seq} (the log has {ledger.size()} entries)"}, 404)
    try:
        found = anchored_receipt(view.runtime.store, ledger, seq)
    except TallyError as exc:
        return JSONResponse({"error": exc.message}, status_of(exc))
    return JSONResponse(found, headers={"Cache-Control": "no-store"})


@router.get("/ledger/anchors")
async def anchors(
    request: Request,
    below: int | None = Query(None, ge=0, le=MAX_SEQ),
    view: View = Depends(page("anonymous")),
) -> Response:
    """The chain's status as it concerns this log, and the anchors recorded here, newest first."""
    runtime = view.runtime
    if runtime.chain is None:
        return render(request, view, "ledger/anchors.html", nav=NAV, enabled=False, chain=None, anchors=[])
    status: dict[str, Any] | None = None
    problem = None
    try:
        status = await run_in_threadpool(chain_status, runtime.chain, runtime.ledger, deploy=False)
    except TallyError as exc:
        problem = exc.message
    size = view.page_size
    found = await run_in_threadpool(recorded_anchors, runtime.store, runtime.ledger, below_size=below, limit=size + 1)
    more = len(found) > size
    return render(
        request, view, "ledger/anchors.html", nav=NAV, enabled=True, chain=status, problem=problem,
        anchors=found[:size], next_args=urlencode({"below": found[size - 1]["size"]}) if more else None,
    )  # fmt: skip
