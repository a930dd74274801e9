"""What every CLI command shares: settings, the opened ledger, and how errors are shown."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from tally.config import Settings, get_settings
from tally.config.errors import ErrorKind, TallyError
from tally.identity import Principal
from tally.ledger import Ledger, open_ledger
from tally.store import Store, open_store

# soft_wrap: long lines (keys, hashes, messages) stay whole when piped or logged
console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def load_cli_settings() -> Settings:
    """Settings, or a one-paragraph error naming the bad field and where settings come from."""
    try:
        return get_settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        env = "TALLY_" + field.upper().replace(".", "__")
        what = "unknown setting" if first["type"] == "extra_forbidden" else "invalid setting"
        detail = "" if first["type"] == "extra_forbidden" else f": {first['msg']}"
        raise fail(f"{what} {field}{detail} (check {env} and {config_file()})") from None
    except tomllib.TOMLDecodeError as exc:
        raise fail(f"{config_file()} is not valid TOML: {exc}") from None
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None


def config_file() -> str:
    return os.environ.get("TALLY_CONFIG", "tally.toml")


@contextmanager
def opened_ledger(settings: Settings | None = None) -> Iterator[tuple[Store, Ledger]]:
    settings = settings or load_cli_settings()
    store = open_store(settings)
    try:
        yield store, open_ledger(settings, store)
    finally:
        store.dispose()


# kind -> exit code: the one mapping of the taxonomy to the CLI (docs/errors.md). Typer already exits 2 on a usage
# error, so no kind uses 2; invalid keeps 1, the code every error had before kinds; internal is sysexits' EX_SOFTWARE.
EXIT_CODES: dict[ErrorKind, int] = {
    "invalid": 1,
    "unauthenticated": 3,
    "forbidden": 3,
    "not_found": 4,
    "conflict": 5,
    "limit": 6,
    "unavailable": 7,
    "internal": 70,
}


@contextmanager
def cli_errors() -> Iterator[None]:
    """A package's error becomes its message on stderr (one line, no traceback) and the exit code of its kind."""
    try:
        yield
    except TallyError as exc:
        raise fail(escape(exc.message), EXIT_CODES[exc.kind]) from None


def acting_principal(session: object, name: str | None) -> Principal:
    """Who a CLI command acts as: `--as NAME` (or TALLY_AS), else the only account with a local key here."""
    from tally.identity import Principal, list_accounts, resolve_account

    if name:
        return Principal.of(resolve_account(session, name))  # type: ignore[arg-type]
    keys_dir = load_cli_settings().account_keys_dir
    local = [a for a in list_accounts(session) if (keys_dir / f"{a.address}.key").exists()]  # type: ignore[arg-type]
    if len(local) == 1:
        return Principal.of(local[0])
    raise fail("say which account acts: --as NAME (or set TALLY_AS); see `tally accounts list`")
