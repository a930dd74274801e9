"""Migrations build exactly the schema the code declares; SQLite runs in WAL mode."""

from __future__ import annotations

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from tests.conftest import sqlite_only

import tally.attribution.tables
import tally.chain.tables
import tally.datanets.tables
import tally.factory.tables
import tally.identity
import tally.rewards.tables  # noqa: F401 - the imports register every package's tables
from tally.config import Settings
from tally.store import Base, open_store
from tally.store.migrate import current_revision, head_from_files, head_revision, upgrade


def test_migrations_match_the_models(settings: Settings) -> None:
    store = open_store(settings)
    assert current_revision(store) == head_revision()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    upgrade(store)  # a second upgrade is a no-op
    store.dispose()


def test_the_start_up_check_reads_the_same_head_as_alembic() -> None:
    assert head_from_files() == head_revision() is not None


@sqlite_only
def test_sqlite_is_in_wal_mode_with_the_configured_durability(settings: Settings) -> None:
    store = open_store(settings)
    with store.read() as s:
        assert s.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert s.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    store.dispose()


def test_the_ledger_layout_migrates_down_and_up_with_the_same_tree(settings: Settings) -> None:
    """0007 moved entries into bundles: a log written before it (made here by downgrading) upgrades intact."""
    from tests.conftest import append_notes

    from tally.ledger import merkle, open_ledger, verify_ledger
    from tally.store.migrate import alembic_config

    store = open_store(settings)
    ledger = open_ledger(settings, store)
    append_notes(ledger, 300)
    ledger.checkpoint()
    root, proof = ledger.root(), ledger.inclusion_proof(77)
    command.downgrade(alembic_config(store), "0006_rewards")
    with store.read() as s:
        assert s.execute(text("SELECT count(*) FROM ledger_entries")).scalar() == 301
        nodes = s.execute(text("SELECT count(*) FROM ledger_nodes")).scalar()
        assert nodes == 301 - bin(301).count("1")  # every internal node, as the old layout kept
    upgrade(store)
    ledger = open_ledger(settings, store)
    assert ledger.tile_height == 8 and ledger.root() == root and ledger.inclusion_proof(77) == proof
    merkle.verify_inclusion(77, 301, merkle.leaf_hash(ledger.entry(77)), proof, root)
    assert verify_ledger(ledger).size == 301
    append_notes(ledger, 5)
    assert verify_ledger(ledger).size == 306
    store.dispose()
