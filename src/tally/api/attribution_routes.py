"""Attribution records and contributor reputation. Answers are attributed on the answer path (`tally.answers`);
these routes read what it recorded: `GET /v1/attributions/{id}` returns the full record with its ledger receipt.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tally.answers import Runtime
from tally.api import policy
from tally.api.state import app_state
from tally.attribution import contributor_reputation, flagged_rows_for_owner, get_record, readable_datanets
from tally.chain import anchored_receipt
from tally.datanets.service import ledger_label
from tally.identity import Principal

router = APIRouter(tags=["attribution"])


@router.get("/v1/attributions/{inference_id}")
def get_attribution(
    inference_id: str, who: Principal = Depends(policy.allow("record_reader")), state: Runtime = Depends(app_state)
) -> dict[str, Any]:
    """The record and its receipt, for the requester, the adapter's developer and admins (404 for anyone else);
    evidence from datanets the reader may not read is shown without its text, hashes or the datanet's name."""
    with state.store.read() as s:
        record, seq = get_record(s, inference_id)
        if not who.has("admin"):
            readable = set(readable_datanets(s, who))
            record = record.seen_by(readable, lambda slug: ledger_label(s, state.ledger, slug))
    return {"record": record.model_dump(mode="json"), "receipt": anchored_receipt(state.store, state.ledger, seq)}


@router.get("/v1/contributors/{address}/reputation")
def reputation(
    address: str, who: Principal | None = Depends(policy.allow("anonymous")), state: Runtime = Depends(app_state)
) -> dict[str, Any]:
    """Accepted/rejected rows, mean signed influence and flagged rows, over the datanets the caller may read
    (public ones without a key)."""
    with state.store.read() as s:
        readable = readable_datanets(s, who)
        return contributor_reputation(s, address, datanets=readable).model_dump(mode="json")


@router.get("/v1/datanets/{slug}/flagged-rows")
def flagged(
    slug: str,
    min_answers: int = 5,
    who: Principal = Depends(policy.allow("datanet_owner")),
    state: Runtime = Depends(app_state),
) -> dict[str, Any]:
    """For the datanet's owner: rows whose influence over at least `min_answers` answers is negative on average."""
    with state.store.read() as s:
        rows = flagged_rows_for_owner(s, who, slug, min_answers)
    return {"datanet": slug, "min_answers": min_answers, "data": [r.model_dump(mode="json") for r in rows]}
