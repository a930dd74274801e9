"""`tally accounts ...` and `tally keys ...`."""

from __future__ import annotations

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, load_cli_settings, opened_ledger
from tally.identity import (
    MAX_KEY_DAYS,
    ROLES,
    create_account,
    create_api_key,
    list_accounts,
    list_api_keys,
    resolve_account,
    revoke_api_key,
)

accounts = typer.Typer(help="Accounts: Ethereum addresses with roles.", no_args_is_help=True)
keys = typer.Typer(help="Bearer API keys for the HTTP API.", no_args_is_help=True)
AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address)")


@accounts.command("create")
def accounts_create(
    name: str = typer.Argument(..., help="short unique name"),
    role: list[str] = typer.Option(..., "--role", help=f"one of {', '.join(ROLES)}; repeat for several"),
    address: str = typer.Option(None, help="register an existing address instead of making a key pair"),
) -> None:
    """Create an account: a new Ethereum key pair (kept here, mode 0600) or an existing address."""
    settings = load_cli_settings()
    with opened_ledger(settings) as (store, ledger), cli_errors(), store.transaction() as s:
        account, key = create_account(s, ledger, name, role, address=address, keys_dir=settings.account_keys_dir)
    console.print(f"account {account.name} {account.address} roles {', '.join(sorted(account.roles))}")
    if key:
        console.print(f"private key saved to {settings.account_keys_dir / (account.address + '.key')}")


@accounts.command("list")
def accounts_list() -> None:
    with opened_ledger() as (store, _), store.read() as s:
        table = Table("name", "address", "roles", "created")
        for a in list_accounts(s):
            table.add_row(a.name, a.address, ", ".join(sorted(a.roles)), a.created_at)
    console.print(table)


@keys.command("create")
def keys_create(
    as_: str = AS,
    role: list[str] = typer.Option(None, "--role", help="narrow the key to these roles"),
    expires_in_days: float = typer.Option(
        None, min=0, max=MAX_KEY_DAYS, help="the key stops working after this many days (at most 3650)"
    ),
    label: str = typer.Option("", help="what the key is for"),
) -> None:
    """Create an API key. The token is printed once and stored only as a hash."""
    from datetime import timedelta

    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        who = acting_principal(s, as_)
        expires = timedelta(days=expires_in_days) if expires_in_days else None
        key, token = create_api_key(
            s, ledger, resolve_account(s, who.address), roles=role or None, expires_in=expires, label=label
        )
    console.print(
        f"key {key.key_id} for {who.name} (roles {', '.join(sorted(key.roles))}, expires {key.expires_at or 'never'})"
    )
    console.print(token, highlight=False)


@keys.command("list")
def keys_list(as_: str = AS) -> None:
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        who = acting_principal(s, as_)
        table = Table("id", "roles", "label", "created", "expires", "revoked")
        for k in list_api_keys(s, who.address):
            table.add_row(
                k.key_id, ", ".join(sorted(k.roles)), k.label, k.created_at, k.expires_at or "", k.revoked_at or ""
            )
    console.print(table)


@keys.command("revoke")
def keys_revoke(key_id: str, as_: str = AS) -> None:
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        key = revoke_api_key(s, ledger, key_id, by=acting_principal(s, as_))
    console.print(f"key {key.key_id} revoked at {key.revoked_at}")
