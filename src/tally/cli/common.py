"""What every CLI command shares: settings, the opened ledger, and how errors are shown."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from pydantic import ValidationError
from rich.console import Console

from tally.config import Settings, get_settings
from tally.ledger import Ledger, open_ledger
from tally.store import Store, open_store

console = Console()
err = Console(stderr=True)


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
        raise fail(
            f"invalid setting {field}: {first['msg']} (settings come from TALLY_* variables and "
            f"{os.environ.get('TALLY_CONFIG', 'tally.toml')})"
        ) from None
    except FileNotFoundError as exc:
        raise fail(str(exc)) from None


@contextmanager
def opened_ledger(settings: Settings | None = None) -> Iterator[tuple[Store, Ledger]]:
    settings = settings or load_cli_settings()
    store = open_store(settings)
    try:
        yield store, open_ledger(settings, store)
    finally:
        store.dispose()
