"""Attribution of served answers: the `attribution` request field, the record and its fee, and the routes.

After an answer is generated, the mode's signals run (in a worker thread), then the record, its ledger event and
the fee's accrual are committed in one transaction. Non-streamed responses carry the summary in `attribution`
and the ledger entry in the `X-Tally-Receipt` header; streamed ones send the summary as a last chunk (no
choices) right before `[DONE]`. `GET /v1/attributions/{id}` returns the full record with its ledger receipt.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from tally.api.auth import principal
from tally.api.errors import ApiError
from tally.api.state import AppState, app_state
from tally.attribution import AttributionRecord
from tally.attribution.reputation import contributor_reputation, flagged_rows_for_owner
from tally.attribution.service import Answer, AttributionError, Attributor, get_record, served_adapter
from tally.identity import AuthError, Principal, authenticate
from tally.ledger import build_receipt
from tally.rewards.policy import FeePolicy, effective_policy
from tally.rewards.settle import settle_answer

router = APIRouter(tags=["attribution"])
RECEIPT_HEADER = "X-Tally-Receipt"


def _attributor(request: Request) -> Attributor | None:
    return getattr(request.app.state, "attributor", None)


def resolve_mode(request: Request, model: str, requested: str | None) -> str:
    """The request's mode, else the model's default; asking for one where attribution is not running is a 503."""
    attributor = _attributor(request)
    if attributor is None:
        if requested not in (None, "off"):
            raise ApiError(503, "attribution needs the full Tally server (`tally serve`)", type_="server_error")
        return "off"
    try:
        return attributor.mode_for(model, requested)
    except AttributionError as exc:
        raise ApiError(400, str(exc), param="attribution") from None


def _fee_policy(request: Request, state: AppState) -> FeePolicy:
    """The fee policy read once: `tally serve` loads it at start (a bad file stops the start); an app assembled
    without it reads it on its first answer."""
    policy: FeePolicy | None = getattr(request.app.state, "fee_policy", None)
    if policy is None:
        policy = request.app.state.fee_policy = effective_policy(state.settings)[0]
    return policy


def _requester(request: Request, state: AppState) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        with state.store.read() as s:
            return authenticate(s, token.strip()).address
    except AuthError:
        return None


async def attribute_answer(
    request: Request,
    *,
    inference_id: str,
    model: str,
    mode: str,
    prompt_ids: list[int],
    answer_ids: list[int],
    question: str | None = None,
    chunks: list[Any] | None = None,
) -> tuple[AttributionRecord, int] | None:
    """Attribute, record and accrue one answer; None when the mode is off or the answer is empty."""
    attributor = _attributor(request)
    state: AppState | None = getattr(request.app.state, "tally", None)
    if mode == "off" or attributor is None or state is None or not answer_ids:
        return None
    adapter_dir, adapter_hash = await run_in_threadpool(served_adapter, request.app.state.engine, model)
    answer = Answer(
        inference_id=inference_id, model=model, prompt_ids=prompt_ids, answer_ids=answer_ids,
        adapter_dir=adapter_dir, adapter_hash=adapter_hash, question=question, chunks=chunks or [],
        requested_by=_requester(request, state),
    )  # fmt: skip
    attributed = await run_in_threadpool(attributor.attribute, answer, mode)  # type: ignore[arg-type]
    policy = _fee_policy(request, state)
    actor = answer.requested_by or "engine"
    return attributed.record, await run_in_threadpool(settle_answer, state.ledger, attributed, policy, actor=actor)


def summary(record: AttributionRecord, seq: int) -> dict[str, Any]:
    return {**record.summary(), "receipt": seq, "receipt_url": f"/v1/ledger/entries/{seq}/receipt"}


@router.get("/v1/attributions/{inference_id}")
def get_attribution(inference_id: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    with state.store.read() as s:
        try:
            record, seq = get_record(s, inference_id)
        except AttributionError as exc:
            raise ApiError(404, str(exc), type_="not_found_error", param="inference_id") from None
    return {"record": record.model_dump(mode="json"), "receipt": build_receipt(state.ledger, seq)}


@router.get("/v1/contributors/{address}/reputation")
def reputation(address: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Public, as the ledger it is computed from: accepted/rejected rows, mean signed influence, flagged rows."""
    with state.store.read() as s:
        return contributor_reputation(s, address).model_dump(mode="json")


@router.get("/v1/datanets/{slug}/flagged-rows")
def flagged(
    slug: str, min_answers: int = 5, who: Principal = Depends(principal), state: AppState = Depends(app_state)
) -> dict[str, Any]:
    """For the datanet's owner: rows whose influence over at least `min_answers` answers is negative on average."""
    with state.store.read() as s:
        rows = flagged_rows_for_owner(s, who, slug, min_answers)
    return {"datanet": slug, "min_answers": min_answers, "data": [r.model_dump(mode="json") for r in rows]}
