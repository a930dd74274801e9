"""Accounts: an Ethereum address with a name and roles. A local private key is kept only for accounts created here."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.identity.events import AccountCreated
from tally.identity.tables import AccountRow
from tally.ledger import Ledger
from tally.ledger.events import now_ts

ROLES = ("admin", "owner", "contributor", "developer", "consumer")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class AccountError(TallyError, ValueError):
    """An account request is invalid (bad name, unknown role); raise sites pass `kind=` for a duplicate (conflict)
    or an unknown account (not_found)."""


@dataclass(frozen=True)
class Account:
    address: str
    name: str
    roles: frozenset[str]
    created_at: str


def _account(row: AccountRow) -> Account:
    return Account(row.address, row.name, frozenset(filter(None, row.roles.split(","))), row.created_at)


def check_roles(roles: list[str] | tuple[str, ...] | frozenset[str]) -> list[str]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise AccountError(f"unknown role {unknown[0]!r}; roles are {', '.join(ROLES)}", param="roles", role=unknown[0])
    if not roles:
        raise AccountError(f"give at least one role ({', '.join(ROLES)})", param="roles")
    return sorted(set(roles))


def create_account(
    session: Session,
    ledger: Ledger,
    name: str,
    roles: list[str],
    *,
    address: str | None = None,
    keys_dir: Path | None = None,
) -> tuple[Account, str | None]:
    """Register an account. Without `address` a new key pair is made and, if `keys_dir` is given, the private key
    is written there (mode 0600). Returns the account and the new private key (hex) or None."""
    if not _NAME.match(name):
        raise AccountError(
            f"account name {name!r} must be 1-64 of a-z, 0-9, '_', '.', '-', starting alphanumeric", param="name"
        )
    role_list = check_roles(roles)
    private_key = None
    if address is None:
        from eth_account import Account as EthAccount  # slow to import; only account creation needs it

        new = EthAccount.create()
        address, private_key = new.address, new.key.hex()
    checked = checksum_address(address)
    if checked is None:
        raise AccountError(f"{address!r} {NOT_AN_ADDRESS}", param="address")
    address = checked
    if session.get(AccountRow, address) is not None:
        raise AccountError(f"account {address} is already registered", kind="conflict", param="address")
    if session.execute(select(AccountRow).where(AccountRow.name == name)).scalar() is not None:
        raise AccountError(f"an account named {name!r} already exists", kind="conflict", param="name")
    row = AccountRow(address=address, name=name, roles=",".join(role_list), created_at=now_ts())
    session.add(row)
    session.flush()
    ledger.append(session, AccountCreated(address=address, name=name, roles=role_list), actor=address)
    if private_key is not None and keys_dir is not None:
        _write_key(keys_dir / f"{address}.key", private_key)
    return _account(row), private_key


def _write_key(path: Path, private_key: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(private_key + "\n")


def load_local_key(keys_dir: Path, address: str) -> str:
    checked = checksum_address(address)
    if checked is None:
        raise AccountError(f"{address!r} {NOT_AN_ADDRESS}")
    path = keys_dir / f"{checked}.key"
    if not path.exists():
        raise AccountError(
            f"no local private key for {address} in {keys_dir} (accounts registered by address sign elsewhere)",
            kind="not_found",
        )
    if path.stat().st_mode & 0o077:
        raise AccountError(f"{path} is readable by others; run `chmod 600 {path}`")
    return path.read_text().strip()


def get_account(session: Session, address: str) -> Account | None:
    checked = checksum_address(address)
    if checked is None:
        return None
    row = session.get(AccountRow, checked)
    return _account(row) if row else None


def resolve_account(session: Session, name_or_address: str) -> Account:
    """An account by name or address, or an AccountError saying neither matched."""
    account = get_account(session, name_or_address)
    if account is None:
        row = session.execute(select(AccountRow).where(AccountRow.name == name_or_address)).scalar()
        account = _account(row) if row else None
    if account is None:
        raise AccountError(f"no account named or at {name_or_address!r} (see `tally accounts list`)", kind="not_found")
    return account


def list_accounts(session: Session) -> list[Account]:
    return [_account(r) for r in session.execute(select(AccountRow).order_by(AccountRow.created_at)).scalars()]
