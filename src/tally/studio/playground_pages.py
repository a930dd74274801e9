"""The playground: chat with the base model or any served adapter, streamed, with retrieval on or off; the answer's
numbered citations, its contributor shares, the evidence of each method, the attribution record and its ledger
receipt, which the page verifies with WebCrypto (`static/receipt.js`).

Every answer goes through `tally.answers` (`prepare` + `stream`, or `answer_async`), as `POST /v1/chat/completions`
and `tally ask` do; the record is read as `GET /v1/attributions/{id}` reads it (`attribution.get_record`, shown as
the reader may see it, with `chain.anchored_receipt`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from tally import answers
from tally.answers import AnswerRequest, Delta, RagOption, Sampling
from tally.config.errors import TallyError
from tally.studio.pages import View, page, render, status_of

router = APIRouter()

MODES = ("fast", "full", "off")
MAX_MESSAGE = 8000


def _models(view: View) -> list[str]:
    """The base model, then the served adapters (the names `GET /v1/models` lists, plus registered ones)."""
    from tally.engine import adapter_registry_path
    from tally.engine.registry import read_registry

    try:
        engine = answers.engine_of(view.runtime)
    except TallyError:
        return [view.runtime.settings.models.default]
    names = {e.name for e in engine.adapters() if not engine.was_unloaded(e.name)}
    names |= {n for n in read_registry(adapter_registry_path(view.runtime.settings)) if not engine.was_unloaded(n)}
    return [engine.model_name, *sorted(names)]


def _rag_datanets(view: View) -> list[str]:
    from tally.datanets.service import list_datanets

    if view.who is None:
        return []
    with view.runtime.store.read() as s:
        return [d.slug for d in list_datanets(s, view.who) if "rag" in d.uses]


@router.get("/playground")
def playground(
    request: Request, model: str = Query("", max_length=256), view: View = Depends(page("inference"))
) -> Response:
    models = _models(view)
    return render(request, view, "playground/index.html", nav="playground", models=models,
                  model=model if model in models else models[-1], datanets=_rag_datanets(view), modes=MODES,
                  mode=view.runtime.settings.attribution.default_mode, message="", result=None)  # fmt: skip


def _request(view: View, form: Any, stream: bool) -> AnswerRequest:
    message = str(form.get("message", "")).strip()
    if not message:
        raise TallyError("message: write a question first", kind="invalid", param="message")
    if len(message) > MAX_MESSAGE:
        raise TallyError(f"message: at most {MAX_MESSAGE} characters", kind="invalid", param="message")
    mode = str(form.get("attribution", "fast"))
    if mode not in MODES:
        raise TallyError(f"attribution: one of {', '.join(MODES)}", kind="invalid", param="attribution")
    rag = None
    if form.get("rag") == "on":
        datanets = [str(d) for d in form.getlist("datanets")]
        if not datanets:
            raise TallyError("retrieval: choose at least one datanet", kind="invalid", param="datanets")
        rag = RagOption(datanets=datanets, top_k=_int(form.get("top_k"), 3, "top_k"))
    sampling = Sampling(
        max_tokens=_int(form.get("max_tokens"), 64, "max_tokens"),
        temperature=_float(form.get("temperature"), 0.0, "temperature"),
    )
    return AnswerRequest(
        model=str(form.get("model", "")), messages=[{"role": "user", "content": message}], sampling=sampling, rag=rag,
        attribution=mode, requester=view.who, id=f"chatcmpl-{uuid.uuid4().hex}", stream=stream,  # type: ignore[arg-type]
    )  # fmt: skip


def _int(value: Any, default: int, field: str) -> int:
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise TallyError(f"{field}: {value!r} is not a whole number", kind="invalid", param=field) from None


def _float(value: Any, default: float, field: str) -> float:
    if value in (None, ""):
        return default
    try:
        return float(str(value))
    except ValueError:
        raise TallyError(f"{field}: {value!r} is not a number", kind="invalid", param=field) from None


@router.post("/playground/answer", response_model=None)
async def answer(request: Request, view: View = Depends(page("inference"))) -> Response | EventSourceResponse:
    """Answer through `tally.answers`. The page's script asks for server-sent events (`delta`, then `done` with the
    inference id); a plain form post (no script) gets the page with the whole answer."""
    form = await request.form()
    wants_stream = "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        req = _request(view, form, stream=False)
        result = await answers.answer_async(view.runtime, req)
        models = _models(view)
        return render(
            request, view, "playground/index.html", nav="playground", models=models, model=req.model,
            datanets=_rag_datanets(view), modes=MODES, mode=req.attribution, message=req.messages[0]["content"]
            if req.messages else "", result=result, **_record_context(view, result.id),
        )  # fmt: skip
    try:
        # Retrieval answers whole (the answer path streams only without it); every check runs before the stream.
        req = _request(view, form, stream=form.get("rag") != "on")
        prepared = await run_in_threadpool(answers.prepare, view.runtime, req) if req.stream else None
    except TallyError as exc:
        return JSONResponse({"error": exc.message, "param": exc.param}, status_code=status_of(exc))

    async def events() -> AsyncIterator[dict[str, str]]:
        try:
            if prepared is None:
                result = await answers.answer_async(view.runtime, req)
                yield {"event": "delta", "data": json.dumps({"text": result.text})}
            else:
                result = None
                async for event in answers.stream(view.runtime, prepared):
                    if isinstance(event, Delta):
                        yield {"event": "delta", "data": json.dumps({"text": event.text})}
                    else:
                        result = event
            assert result is not None
            done = {"id": result.id, "model": result.model, "finish_reason": result.finish_reason,
                    "receipt": result.receipt, "attributed": result.record is not None}  # fmt: skip
            yield {"event": "done", "data": json.dumps(done)}
        except TallyError as exc:  # the stream has started: the error goes in it
            yield {"event": "failed", "data": json.dumps({"error": exc.message})}

    return EventSourceResponse(events(), ping=15)


def _record_context(view: View, inference_id: str) -> dict[str, Any]:
    """The record as its reader may see it and its receipt, exactly as `GET /v1/attributions/{id}` returns them."""
    from tally.attribution import AttributionError, get_record, readable_datanets
    from tally.chain import anchored_receipt
    from tally.datanets.service import ledger_label
    from tally.identity import list_accounts

    rt = view.runtime
    with rt.store.read() as s:
        try:
            record, seq = get_record(s, inference_id)
        except AttributionError:
            return {"record": None}
        if view.who is None or not view.who.has("admin"):
            readable = set(readable_datanets(s, view.who))
            record = record.seen_by(readable, lambda slug: ledger_label(s, rt.ledger, slug))
        names = {a.address: a.name for a in list_accounts(s)}
    receipt = anchored_receipt(rt.store, rt.ledger, seq)
    shares = sorted(record.shares, key=lambda sh: -sh.share)
    return {
        "record": record, "seq": seq, "receipt_json": json.dumps(receipt, indent=1), "names": names, "shares": shares,
        # inert JSON inside <script type="application/json">: no "<" may close the element early
        "receipt_script": json.dumps(receipt).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
        "verifier_key": rt.ledger.signer.verifier.encode(),
    }  # fmt: skip


@router.get("/playground/answers/{inference_id}")
def answer_record(
    request: Request, inference_id: str, partial: bool = Query(False), view: View = Depends(page("record_reader"))
) -> Response:
    """An answer's attribution record (for its requester, the adapter's developer and admins): shares, evidence
    per method, citations and the receipt, verified in the page."""
    context = _record_context(view, inference_id)
    template = "playground/_record.html" if partial else "playground/record.html"
    return render(request, view, template, nav="playground", inference_id=inference_id, **context)


@router.get("/playground/rows/{slug}/{row_hash}")
def cited_row(request: Request, slug: str, row_hash: str, view: View = Depends(page("key"))) -> Response:
    """One datanet row an answer cites or its evidence names, as the datanet's page would show it to the reader
    (`datanets.service.rows_by_hash`: the same visibility; a row they may not see is not found)."""
    from tally.datanets.service import rows_by_hash
    from tally.identity import list_accounts

    assert view.who is not None
    with view.runtime.store.read() as s:
        row = rows_by_hash(s, view.who, slug, [row_hash]).get(row_hash)
        names = {a.address: a.name for a in list_accounts(s)}
    if row is None:
        raise TallyError(f"no row {row_hash[:12]} you may see in datanet {slug!r}", kind="not_found", param="row")
    return render(request, view, "playground/row.html", nav="playground", slug=slug, row=row, names=names,
                  content=json.dumps(row["content"], indent=1, ensure_ascii=False))  # fmt: skip
