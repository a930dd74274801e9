"""Bearer API keys: `tly_<key id>_<secret>`. Only SHA-256(secret) is stored; the token is shown once.

The secret carries 256 random bits, so a plain hash (as for GitHub tokens) is enough: nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.identity.accounts import Account, AccountError, check_roles, get_account
from tally.identity.events import ApiKeyCreated, ApiKeyRevoked
from tally.identity.tables import ApiKeyRow
from tally.ledger import Ledger
from tally.ledger.events import now_ts

PREFIX = "tly"
MAX_KEY_DAYS = 3650  # a key's longest lifetime; past it, rotate (a far-off date would also overflow the clock)
MAX_LIVE_KEYS = 20  # per account: rate limits are per key, so minting keys must not multiply them
MAX_LABEL = 128  # the label column's width (PostgreSQL enforces it)


class AuthError(TallyError, PermissionError):
    """Authentication failed; the message says why without revealing whether a key exists."""

    kind = "unauthenticated"


@dataclass(frozen=True)
class Principal:
    """Who is calling: an account and the roles its key grants."""

    address: str
    name: str
    roles: frozenset[str]
    key_id: str | None = None

    def has(self, *roles: str) -> bool:
        return "admin" in self.roles or any(r in self.roles for r in roles)

    @classmethod
    def of(cls, account: Account) -> Principal:
        return cls(account.address, account.name, account.roles)


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    account: str
    roles: frozenset[str]
    label: str
    created_at: str
    expires_at: str | None
    revoked_at: str | None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        row.key_id,
        row.account,
        frozenset(row.roles.split(",")),
        row.label,
        row.created_at,
        row.expires_at,
        row.revoked_at,
    )


def create_api_key(
    session: Session,
    ledger: Ledger,
    account: Account,
    *,
    roles: list[str] | None = None,
    expires_in: timedelta | None = None,
    label: str = "",
    not_after: str | None = None,
) -> tuple[ApiKey, str]:
    """A new key for `account` with at most the account's roles; returns the key and its token (shown once).

    `not_after`: the expiry of the key that asks for this one. A key minted with an expiring key expires no later
    (without `expires_in` it inherits that expiry), so a short-lived key cannot turn itself into a lasting one."""
    key_roles = check_roles(roles) if roles else sorted(account.roles)
    extra = set(key_roles) - set(account.roles)
    if extra:
        raise AccountError(
            f"account {account.name} does not hold role {sorted(extra)[0]!r}",
            kind="forbidden",
            param="roles",
            role=sorted(extra)[0],
        )
    if len(label) > MAX_LABEL:
        raise AccountError(f"a key's label is at most {MAX_LABEL} characters, not {len(label)}", param="label")
    if expires_in is not None and not timedelta(0) < expires_in <= timedelta(days=MAX_KEY_DAYS):
        raise AccountError(
            f"a key expires after more than 0 and at most {MAX_KEY_DAYS} days",
            param="expires_in_days", max_days=MAX_KEY_DAYS,
        )  # fmt: skip
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    live = session.execute(
        select(func.count())
        .select_from(ApiKeyRow)
        .where(
            ApiKeyRow.account == account.address,
            ApiKeyRow.revoked_at.is_(None),
            (ApiKeyRow.expires_at.is_(None)) | (ApiKeyRow.expires_at > now),
        )
    ).scalar_one()
    if live >= MAX_LIVE_KEYS:
        raise AccountError(
            f"account {account.name} already holds {live} live keys (at most {MAX_LIVE_KEYS}); revoke one first",
            kind="limit", limit=MAX_LIVE_KEYS, size=live,
        )  # fmt: skip
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    expires = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%S.%fZ") if expires_in else None
    if not_after is not None:
        if expires is not None and expires > not_after:
            raise AccountError(
                f"a key that expires at {not_after} cannot make one that expires later ({expires})",
                kind="forbidden", param="expires_in_days", expires_at=expires, not_after=not_after,
            )  # fmt: skip
        expires = expires or not_after
    row = ApiKeyRow(
        key_id=key_id,
        account=account.address,
        secret_hash=_hash(secret),
        roles=",".join(key_roles),
        label=label,
        created_at=now_ts(),
        expires_at=expires,
        revoked_at=None,
    )
    session.add(row)
    session.flush()
    event = ApiKeyCreated(key_id=key_id, account=account.address, roles=key_roles, expires_at=expires)
    ledger.append(session, event, actor=account.address)
    return _key(row), f"{PREFIX}_{key_id}_{secret}"


def revoke_api_key(session: Session, ledger: Ledger, key_id: str, *, by: Principal) -> ApiKey:
    row = session.get(ApiKeyRow, key_id)
    if row is None or (row.account != by.address and "admin" not in by.roles):
        raise AccountError(f"no API key {key_id!r} that you may revoke", kind="not_found")
    if row.revoked_at is None:
        row.revoked_at = now_ts()
        ledger.append(session, ApiKeyRevoked(key_id=key_id, account=row.account), actor=by.address)
    return _key(row)


def list_api_keys(session: Session, address: str) -> list[ApiKey]:
    rows = session.execute(select(ApiKeyRow).where(ApiKeyRow.account == address).order_by(ApiKeyRow.created_at))
    return [_key(r) for r in rows.scalars()]


def authenticate(session: Session, token: str) -> Principal:
    """The principal behind a bearer token, or AuthError (malformed, unknown, revoked or expired)."""
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != PREFIX:
        raise AuthError("malformed API key; expected tly_<id>_<secret>")
    row = session.get(ApiKeyRow, parts[1])
    if row is None or not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
        raise AuthError("invalid API key")
    return _principal(session, row)


def principal_of_key(session: Session, key_id: str) -> Principal:
    """The principal of a key already proven by its holder (a studio session signed when the key was shown), or
    AuthError when the key is unknown, revoked or expired since."""
    row = session.get(ApiKeyRow, key_id)
    if row is None:
        raise AuthError("invalid API key")
    return _principal(session, row)


def _principal(session: Session, row: ApiKeyRow) -> Principal:
    if row.revoked_at is not None:
        raise AuthError(f"API key {row.key_id} was revoked at {row.revoked_at}")
    if row.expires_at is not None and row.expires_at <= now_ts():
        raise AuthError(f"API key {row.key_id} expired at {row.expires_at}")
    account = get_account(session, row.account)
    if account is None:
        raise AuthError("invalid API key")
    return Principal(account.address, account.name, frozenset(row.roles.split(",")) & account.roles, row.key_id)
