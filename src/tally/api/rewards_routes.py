"""/v1/rewards: contributor statements, epochs and payout proofs; closing an epoch (admin); requesters' credit.

Mount with `app.include_router(rewards_routes.router)`. Reading earnings is open, like the ledger it mirrors: every
amount is already public in the `rewards.accrued` entries, and a claimant needs its proof without an API key. A
prepaid credit balance is for its account and admins; only an admin adds credit.
Amounts are decimal strings (uint256 values outgrow JSON numbers). Rewards errors become 400/404/409 responses in
`tally.api.errors`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from tally.api import policy
from tally.api.state import AppState, app_state
from tally.identity import Principal
from tally.identity.addresses import checksum_address
from tally.rewards import (
    add_credit,
    close_epoch,
    credit_of,
    list_epochs,
    payout_proof,
    statement,
)

router = APIRouter(prefix="/v1/rewards", tags=["rewards"])


class CreditBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str
    amount: Annotated[int, Field(gt=0, lt=2**256)]  # base units; a decimal string is accepted too


@router.get("/statement/{address}")
def get_statement(
    address: str, who: Principal | None = Depends(policy.allow("anonymous")), state: AppState = Depends(app_state)
) -> dict[str, Any]:
    """An account's earnings answer by answer, with accrued, paid and unpaid totals; its prepaid credit too when
    the caller is that account or an admin."""
    own = who is not None and ("admin" in who.roles or policy.is_address_of(who, address))
    with state.store.read() as s:
        return statement(s, address, with_credit=own).as_json()


@router.post("/credits")
def post_credit(
    body: CreditBody, who: Principal = Depends(policy.allow("admin")), state: AppState = Depends(app_state)
) -> dict[str, Any]:
    """Add prepaid credit to an account (admin); answers it asks for are charged to it."""
    with state.store.transaction() as s:
        move = add_credit(s, state.ledger, body.account, body.amount, by=who.address)
    return {"account": checksum_address(body.account), **move.as_json()}


@router.get("/credits/{address}", dependencies=[Depends(policy.allow("account"))])
def get_credit(address: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """An account's prepaid credit: balance, totals credited and charged, and every move."""
    with state.store.read() as s:
        return credit_of(s, address).as_json()


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
