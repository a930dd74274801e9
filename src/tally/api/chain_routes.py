"""/v1/chain: the anchors of the ledger on chain; /v1/rewards/... on-chain settlement, claims and balances.

Reading is public (the chain is public anyway); anchoring, verifying against the whole log and settling are the
operator's. A claim is signed by the contributor's own wallet: the server only says what to send."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query
from starlette.concurrency import run_in_threadpool

from tally.api import policy
from tally.api.state import AppState, app_state
from tally.chain import (
    Chain,
    ChainError,
    anchor_head,
    chain_status,
    claim_transaction,
    onchain_balance,
    recorded_anchors,
    settle_epoch,
    verify_anchors,
)
from tally.rewards import payout_proof

router = APIRouter(tags=["chain"])


def _chain(state: AppState) -> Chain:
    if state.chain is None:
        raise ChainError("the chain is off on this server (chain.enabled = false)", kind="unavailable")
    return state.chain


@router.get("/v1/chain/status", dependencies=[Depends(policy.allow("anonymous"))])
async def status(state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Which chain, the contracts, the anchored size of the log and pending transactions. Deploys nothing."""
    result = await run_in_threadpool(chain_status, _chain(state), state.ledger, deploy=False)
    anchorer = state.anchorer
    result["anchorer"] = None if anchorer is None else {
        "every_entries": state.settings.chain.anchor_every_entries,
        "interval_seconds": state.settings.chain.anchor_interval_seconds,
        "anchors_sent": anchorer.anchors, "last_error": anchorer.last_error,
    }  # fmt: skip
    return result


@router.get("/v1/chain/anchors", dependencies=[Depends(policy.allow("anonymous"))])
def anchors(
    below: int | None = Query(None, ge=0, le=2**62, description="anchors of tree sizes below this (paging)"),
    limit: int = Query(50, ge=1, le=500),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    """The log's anchors recorded here, newest first (no chain connection; the studio's anchors page shows them)."""
    found = recorded_anchors(state.store, state.ledger, below_size=below, limit=limit)
    return {"object": "list", "data": found}


@router.post("/v1/chain/anchor", dependencies=[Depends(policy.allow("admin"))])
async def anchor(state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Anchor the log's head now (nothing is sent when the chain already holds this size)."""
    outcome = await run_in_threadpool(anchor_head, _chain(state), state.ledger)
    return outcome.as_json()


@router.get("/v1/chain/verify", dependencies=[Depends(policy.allow("admin"))])
async def verify(state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Every on-chain anchor checked against the local log; 409 naming both sizes and roots at a divergence."""
    report = await run_in_threadpool(verify_anchors, _chain(state), state.ledger)
    return report.as_json()


@router.post("/v1/rewards/epochs/{number}/settle", dependencies=[Depends(policy.allow("admin"))])
async def settle(number: int, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Post epoch `number`'s payout root to the distributor and fund it (nothing is sent when already settled)."""
    done = await run_in_threadpool(settle_epoch, _chain(state), number)
    return done.as_json()


@router.get("/v1/rewards/claims/{address}", dependencies=[Depends(policy.allow("anonymous"))])
async def claim(
    address: str,
    epoch: int | None = Query(None, ge=1, description="epoch (default: the latest that pays the address)"),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    """The transaction a wallet sends to claim: `to` (the distributor) and `data` (the encoded claim call), with
    the proof. Anyone may submit it; the tokens always go to the address in the proof."""
    with state.store.read() as s:
        proof = payout_proof(s, address, epoch)
    return await run_in_threadpool(claim_transaction, _chain(state), proof)


@router.get("/v1/rewards/onchain/{address}", dependencies=[Depends(policy.allow("anonymous"))])
async def balance(address: str, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """The address's reward-token balance on chain and which of its payouts are claimed."""
    result = await run_in_threadpool(onchain_balance, _chain(state), address)
    return result.as_json()
