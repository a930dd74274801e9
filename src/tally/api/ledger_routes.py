"""/v1/ledger: checkpoints, entries, receipts and proofs (base64 hashes, as in signed notes)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Depends, Query

from tally.api import policy
from tally.api.errors import ApiError
from tally.api.state import AppState, app_state
from tally.chain import anchored_receipt
from tally.identity import Principal
from tally.ledger import merkle

# The ledger is public: anyone may read and check it.
router = APIRouter(prefix="/v1/ledger", tags=["ledger"], dependencies=[Depends(policy.allow("anonymous"))])


def _bad(exc: Exception, param: str) -> ApiError:
    return ApiError(400, str(exc), param=param)


@router.get("/checkpoint")
def checkpoint(
    who: Principal | None = Depends(policy.allow("anonymous")), state: AppState = Depends(app_state)
) -> dict[str, Any]:
    """The newest signed checkpoint. A caller with a key gets a new one signed when the log has grown; an anonymous
    caller gets the latest one already signed, so it cannot make the server sign and fsync at will (only the very
    first checkpoint of a log is signed on demand, once)."""
    ledger = state.ledger
    cp = ledger.latest_checkpoint() if who is None else None
    if cp is None:
        cp = ledger.checkpoint()
    return {
        "origin": ledger.origin,
        "size": cp.size,
        "root": merkle.b64(cp.root),
        "checkpoint": cp.note,
        "verifier_key": ledger.signer.verifier.encode(),
        "created_at": cp.created_at,
    }


@router.get("/entries/{seq}")
def entry(seq: int, state: AppState = Depends(app_state)) -> dict[str, Any]:
    body = state.ledger.entry(seq)  # a missing entry is a 404 naming `seq`
    return {
        "seq": seq,
        "leaf_hash": merkle.b64(merkle.leaf_hash(body)),
        "body": body.decode(),
        "entry": json.loads(body),
    }


@router.get("/entries/{seq}/receipt")
def receipt(seq: int, state: AppState = Depends(app_state)) -> dict[str, Any]:
    """Entry, inclusion proof and signed checkpoint in one JSON, checkable offline."""
    if not 0 <= seq < state.ledger.size():
        raise ApiError(404, f"no ledger entry {seq}", type_="not_found_error", param="seq")
    return anchored_receipt(state.store, state.ledger, seq)


@router.get("/proofs/inclusion")
def inclusion(
    index: int = Query(..., ge=0),
    size: int | None = Query(None, ge=1, description="tree size (default: the current size)"),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    ledger = state.ledger
    with state.store.read() as s:
        tree_size = size if size is not None else ledger.size(s)
        try:
            proof = ledger.inclusion_proof(index, tree_size, s)
            root = ledger.root(tree_size, s)
            leaf = merkle.leaf_hash(ledger.entry(index, s))
        except ValueError as exc:
            raise _bad(exc, "size" if size is not None and size > ledger.size(s) else "index") from None
    return {
        "index": index,
        "tree_size": tree_size,
        "leaf_hash": merkle.b64(leaf),
        "root": merkle.b64(root),
        "inclusion_proof": [merkle.b64(h) for h in proof],
    }


@router.get("/proofs/consistency")
def consistency(
    first: int = Query(..., ge=1),
    second: int | None = Query(None, ge=1, description="newer tree size (default: the current size)"),
    state: AppState = Depends(app_state),
) -> dict[str, Any]:
    ledger = state.ledger
    with state.store.read() as s:
        new = second if second is not None else ledger.size(s)
        try:
            proof = ledger.consistency_proof(first, new, s)
            roots = ledger.root(first, s), ledger.root(new, s)
        except ValueError as exc:
            raise _bad(exc, "first") from None
    return {
        "first": first,
        "second": new,
        "first_root": merkle.b64(roots[0]),
        "second_root": merkle.b64(roots[1]),
        "consistency_proof": [merkle.b64(h) for h in proof],
    }
