"""What every CLI command shares: settings, the opened ledger, and how errors are shown."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

from tally.config import Settings, get_settings
from tally.ledger import Ledger, open_ledger
from tally.store import Store, open_store

console = Console()
err = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


@contextmanager
def opened_ledger(settings: Settings | None = None) -> Iterator[tuple[Store, Ledger]]:
    settings = settings or get_settings()
    store = open_store(settings)
    try:
        yield store, open_ledger(settings, store)
    finally:
        store.dispose()
