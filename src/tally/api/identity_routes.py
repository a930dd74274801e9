"""/v1/accounts and /v1/keys."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from tally.api import policy
from tally.api.state import AppState, app_state
from tally.identity import (
    MAX_KEY_DAYS,
    Account,
    ApiKey,
    Principal,
    create_account,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from tally.identity import get_account as find_account

router = APIRouter(prefix="/v1", tags=["identity"])


class AccountIn(BaseModel):
    name: str
    roles: list[str]
    address: str | None = Field(None, description="register an existing address; omit to make a key pair")


class KeyIn(BaseModel):
    roles: list[str] | None = None
    expires_in_days: float | None = Field(None, gt=0, le=MAX_KEY_DAYS)
    label: str = ""


def account_json(a: Account) -> dict[str, Any]:
    return {"address": a.address, "name": a.name, "roles": sorted(a.roles), "created_at": a.created_at}


def key_json(k: ApiKey) -> dict[str, Any]:
    return {
        "id": k.key_id, "account": k.account, "roles": sorted(k.roles), "label": k.label,
        "created_at": k.created_at, "expires_at": k.expires_at, "revoked_at": k.revoked_at,
    }  # fmt: skip


@router.post("/accounts", status_code=201)
def create(body: AccountIn, _: Principal = Depends(policy.allow("admin")), state: AppState = Depends(app_state)) -> Any:
    """Admins register accounts. A new key pair's private key is returned once, never stored by the server."""
    with state.store.transaction() as s:
        account, private_key = create_account(s, state.ledger, body.name, body.roles, address=body.address)
    return {**account_json(account), "private_key": private_key}


@router.get("/accounts/me")
def me(who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)) -> Any:
    with state.store.read() as s:
        account = find_account(s, who.address)
    assert account is not None
    return {**account_json(account), "key": {"id": who.key_id, "roles": sorted(who.roles)}}


@router.post("/keys", status_code=201)
def new_key(body: KeyIn, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)) -> Any:
    """A new key for the caller's own account, with at most the caller's roles. The token is shown once."""
    roles = body.roles or sorted(who.roles)
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    with state.store.transaction() as s:
        account = find_account(s, who.address)
        assert account is not None
        narrowed = Account(account.address, account.name, who.roles & account.roles, account.created_at)
        caller = next((k for k in list_api_keys(s, who.address) if k.key_id == who.key_id), None)
        key, token = create_api_key(
            s, state.ledger, narrowed, roles=roles, expires_in=expires, label=body.label,
            not_after=caller.expires_at if caller is not None else None,
        )  # fmt: skip
    return {**key_json(key), "token": token}


@router.get("/keys")
def keys(who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)) -> Any:
    with state.store.read() as s:
        return {"data": [key_json(k) for k in list_api_keys(s, who.address)]}


@router.delete("/keys/{key_id}")
def revoke(key_id: str, who: Principal = Depends(policy.allow("key")), state: AppState = Depends(app_state)) -> Any:
    with state.store.transaction() as s:
        return key_json(revoke_api_key(s, state.ledger, key_id, by=who))
