"""Attribution records and contributor reputation. Answers are attributed on the answer path (`tally.answers`);
these routes read what it recorded: `GET /v1/attributions/{id}` returns the full record with its ledger receipt.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tally.answers import Runtime
from tally.api.auth import principal
from tally.api.state import app_state
from tally.attribution import contributor_reputation, flagged_rows_for_owner, get_record
from tally.identity import Principal
from tally.ledger import build_receipt

router = APIRouter(tags=["attribution"])


@router.get("/v1/attributions/{inference_id}")
def get_attribution(inference_id: str, state: Runtime = Depends(app_state)) -> dict[str, Any]:
    with state.store.read() as s:
        record, seq = get_record(s, inference_id)
    return {"record": record.model_dump(mode="json"), "receipt": build_receipt(state.ledger, seq)}


@router.get("/v1/contributors/{address}/reputation")
def reputation(address: str, state: Runtime = Depends(app_state)) -> dict[str, Any]:
    """Public, as the ledger it is computed from: accepted/rejected rows, mean signed influence, flagged rows."""
    with state.store.read() as s:
        return contributor_reputation(s, address).model_dump(mode="json")


@router.get("/v1/datanets/{slug}/flagged-rows")
def flagged(
    slug: str, min_answers: int = 5, who: Principal = Depends(principal), state: Runtime = Depends(app_state)
) -> dict[str, Any]:
    """For the datanet's owner: rows whose influence over at least `min_answers` answers is negative on average."""
    with state.store.read() as s:
        rows = flagged_rows_for_owner(s, who, slug, min_answers)
    return {"datanet": slug, "min_answers": min_answers, "data": [r.model_dump(mode="json") for r in rows]}
