"""/v1/rewards: contributor statements, epochs and payout proofs; closing an epoch (admin).

Mount with `app.include_router(rewards_routes.router)`. Reading is open, like the ledger it mirrors: every
amount is already public in the `rewards.accrued` entries, and a claimant needs its proof without an API key.
Amounts are decimal strings (uint256 values outgrow JSON numbers). Rewards errors become 400/404/409 responses in
`tally.api.errors`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from tally.api import policy
from tally.api.state import AppState, app_state
from tally.identity import Principal
from tally.rewards import (
    close_epoch,
    list_epochs,
    payout_proof,
    statement,
)

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])


@router.get("/statement/{address}", dependencies=[Depends(policy.allow("anonymous"))])
def get_statement(address: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """An account's earnings answer by answer, with accrued, paid and unpaid totals."""
    with state.store.read() as s:
        return statement(s, address).as_json()


@router.get("/epochs", dependencies=[Depends(policy.allow("anonymous"))])
def get_epochs(state: AppState = Depends(app_state)) -> dict[str, Any]:
    with state.store.read() as s:
        return {"object": "list", "data": [e.as_json() for e in list_epochs(s)]}


@router.get("/epochs/{number}/proofs/{address}", dependencies=[Depends(policy.allow("anonymous"))])
def get_proof(number: int, address: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """What `RewardDistributor.claim` takes: index, account, amount and proof, with the epoch's root."""
    with state.store.read() as s:
        return payout_proof(s, address, number).as_json()


@router.post("/epochs")
def post_epoch(who: Principal = Depends(policy.allow("admin")), state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Close the next epoch over every unpaid amount (409 when there is nothing to pay)."""
    with state.store.transaction() as s:
        return close_epoch(s, state.ledger, actor=who.address).as_json()
