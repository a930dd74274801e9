"""Migrations build exactly the schema the code declares; SQLite runs in WAL mode."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text

import tally.attribution.tables
import tally.datanets.tables
import tally.factory.tables
import tally.identity
import tally.rewards.tables  # noqa: F401 - the imports register every package's tables
from tally.config import Settings
from tally.store import Base, open_store
from tally.store.migrate import current_revision, head_revision, upgrade


def test_migrations_match_the_models(settings: Settings) -> None:
    store = open_store(settings)
    assert current_revision(store) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    upgrade(store)  # a second upgrade is a no-op
    store.dispose()


def test_sqlite_is_in_wal_mode_with_the_configured_durability(settings: Settings) -> None:
    store = open_store(settings)
    with store.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    store.dispose()
