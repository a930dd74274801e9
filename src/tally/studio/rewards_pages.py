"""Rewards pages: an account's balance and statement (answer by answer, paged), the epochs that pay it with their
payout proofs, and claiming: the `to` and `data` a wallet sends (sent through `window.ethereum` where a wallet is
present) and the on-chain balance when the chain is on. Earnings are public, as in the API: anyone may look up an
address; prepaid credit is shown to the account itself and admins only."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from tally.answers import is_address_of
from tally.chain import claim_transaction, onchain_balance
from tally.config.errors import TallyError
from tally.rewards import balance_of, credit_of, list_epochs, payout_proof, payouts_of, statement_page
from tally.studio.pages import View, page, render

router = APIRouter()

NAV = "rewards"


def _address(view: View, address: str) -> str | None:
    address = address.strip()
    if address:
        return address
    return view.who.address if view.who is not None else None


@router.get("/rewards")
async def rewards(
    request: Request,
    address: str = Query("", max_length=64, description="0x address; default: the signed-in account's"),
    before: int | None = Query(None, ge=0, le=2**62),
    view: View = Depends(page("anonymous")),
) -> Response:
    account = _address(view, address)
    if account is None:
        return render(request, view, "rewards/index.html", nav=NAV, account=None)
    runtime = view.runtime
    size = view.page_size
    with runtime.store.read() as s:
        balance = balance_of(s, account)  # an address that is not one: invalid, naming it
        account = balance.account
        items = statement_page(s, account, before=before, limit=size + 1)
        payouts = payouts_of(s, account)
        own = view.who is not None and ("admin" in view.who.roles or is_address_of(view.who, account))
        credit = credit_of(s, account) if own else None
    more = len(items) > size
    items = items[:size]
    onchain: dict[str, Any] | None = None
    chain_problem = None
    if runtime.chain is not None and payouts:
        try:
            onchain = (await run_in_threadpool(onchain_balance, runtime.chain, account)).as_json()
        except TallyError as exc:
            chain_problem = exc.message
    args = {"address": account}
    return render(
        request, view, "rewards/index.html", nav=NAV, account=account, balance=balance, items=items,
        payouts=payouts, credit=credit, own=own, chain_enabled=runtime.chain is not None, onchain=onchain,
        chain_problem=chain_problem, chain_id=runtime.settings.chain_id,
        next_args=urlencode({**args, "before": items[-1][0]}) if more else None,
        first_args=urlencode(args) if before is not None else None,
    )  # fmt: skip


@router.get("/rewards/epochs")
def epochs(request: Request, view: View = Depends(page("anonymous"))) -> Response:
    with view.runtime.store.read() as s:
        found = list_epochs(s)
    return render(request, view, "rewards/epochs.html", nav=NAV, epochs=found[::-1])


@router.get("/rewards/claim")
async def claim(
    request: Request,
    address: str = Query("", max_length=64, description="0x address; default: the signed-in account's"),
    epoch: int = Query(..., ge=1, le=2**31),
    view: View = Depends(page("anonymous")),
) -> Response:
    """The claim of one payout: the proof, and (chain on) the transaction a wallet sends."""
    account = _address(view, address)
    if account is None:
        raise TallyError("address: name the account whose payout to claim", param="address")
    runtime = view.runtime
    with runtime.store.read() as s:
        proof = payout_proof(s, account, epoch)
    transaction: dict[str, Any] | None = None
    problem = None
    if runtime.chain is not None:
        try:
            transaction = await run_in_threadpool(claim_transaction, runtime.chain, proof)
        except TallyError as exc:
            problem = exc.message
    if request.headers.get("accept", "").startswith("application/json"):
        if transaction is None:
            reason = problem or "the chain is off on this server (chain.enabled = false)"
            return JSONResponse({"error": reason}, status_code=503)
        return JSONResponse(transaction)
    return render(
        request, view, "rewards/claim.html", nav=NAV, proof=proof, transaction=transaction, problem=problem,
        chain_enabled=runtime.chain is not None, account=proof.account,
    )  # fmt: skip
