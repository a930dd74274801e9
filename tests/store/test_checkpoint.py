"""WAL checkpoints run on a background thread, not inside a writer's commit."""

from __future__ import annotations

import time

from sqlalchemy import text
from tests.conftest import sqlite_only

from tally.config import Settings
from tally.store import open_store
from tally.store.checkpoint import BACKSTOP_PAGES
from tally.store.db import SQLITE_PAGE_SIZE

pytestmark = sqlite_only  # WAL checkpoints are SQLite's


def test_committed_pages_reach_the_database_file_without_a_writer_checkpointing(settings: Settings) -> None:
    store = open_store(settings)
    db = settings.data_dir / "tally.db"
    with store.read() as s:
        assert s.execute(text("PRAGMA page_size")).scalar() == SQLITE_PAGE_SIZE
        assert s.execute(text("PRAGMA wal_autocheckpoint")).scalar() == BACKSTOP_PAGES  # far above what we write
    with store.transaction() as s:
        s.execute(text("CREATE TABLE payloads (data BLOB)"))
    time.sleep(1)  # the checkpointer is idle again: only the next commit can wake it
    before = db.stat().st_size
    with store.transaction() as s:
        s.execute(text("INSERT INTO payloads VALUES (zeroblob(4000000))"))
    deadline = time.monotonic() + 10
    while db.stat().st_size < before + 3_500_000 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert db.stat().st_size >= before + 3_500_000  # only a checkpoint writes pages into the main file
    assert store._checkpointer is not None
    thread = store._checkpointer._thread
    store.dispose()
    assert not thread.is_alive()
