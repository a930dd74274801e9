"""Shared fixtures: an isolated data directory and an opened ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tally.config import Settings, get_settings, load_settings
from tally.ledger import Event, Ledger, open_ledger
from tally.store import Store, open_store


class Note(Event):
    """A test-only event type."""

    event_type: ClassVar[str] = "test.note"
    text: str


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """Settings pointing at a fresh data directory; the environment too, so CLI commands see the same."""
    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALLY_DATA_DIR", str(data))
    monkeypatch.delenv("TALLY_CONFIG", raising=False)
    monkeypatch.delenv("TALLY_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    yield load_settings()
    get_settings.cache_clear()


@pytest.fixture
def store(settings: Settings) -> Iterator[Store]:
    s = open_store(settings)
    yield s
    s.dispose()


@pytest.fixture
def ledger(settings: Settings, store: Store) -> Ledger:
    return open_ledger(settings, store)


def append_notes(ledger: Ledger, count: int, prefix: str = "note") -> list[int]:
    with ledger.store.transaction() as s:
        return [a.seq for a in ledger.append_batch(s, [(Note(text=f"{prefix}-{i}"), "alice") for i in range(count)])]
