"""SQLAlchemy engine and sessions. SQLite (WAL) by default, PostgreSQL by URL.

pysqlite's own transaction handling starts transactions late and lets SELECTs run outside them; we turn it off
and emit BEGIN ourselves so every session is one real transaction. `Store.transaction()` begins IMMEDIATE on
SQLite, taking the write lock up front, so a read-then-write in one transaction never fails on upgrade.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tally.config import Settings
from tally.store.checkpoint import BACKSTOP_PAGES, WAL_SIZE_LIMIT, WalCheckpointer


class Base(DeclarativeBase):
    pass


SQLITE_PAGE_SIZE = 16384


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # Takes effect only while the file is new: 16 KiB pages suit the ledger's bundle rows (about a third less
        # I/O per batch than 4 KiB pages) and cost small rows nothing.
        cursor.execute(f"PRAGMA page_size={SQLITE_PAGE_SIZE}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        immediate = conn.get_execution_options().get("tally_immediate", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Store:
    """One database: an engine plus session factories."""

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL") -> None:
        self.url = url
        self._checkpointer: WalCheckpointer | None = None
        self._wal_path: str | None = None
        self._checkpointer_lock = threading.Lock()
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        if self.is_sqlite:
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, sqlite_synchronous)
            if database and database != ":memory:" and not database.startswith("file:"):
                self._wal_path = str(Path(database).resolve())
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        writer = self.engine.execution_options(tally_immediate=True) if self.is_sqlite else self.engine
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        if self._wal_path is not None:
            # The session's after_commit, not the engine's commit event: the latter fires before SQLite commits,
            # and a checkpoint started then would leave this transaction in the WAL.
            event.listen(self._write_sessions, "after_commit", self._after_commit)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on any exception."""
        with self._write_sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only view; nothing it does is committed."""
        with self._sessions() as session:
            try:
                yield session
            finally:
                session.rollback()

    def _after_commit(self, _session: Session) -> None:
        """Wake the WAL checkpointer, starting it on the first commit (a store that only reads never needs one)."""
        with self._checkpointer_lock:
            if self._checkpointer is None and self._wal_path is not None:
                self._checkpointer = WalCheckpointer(self._wal_path)
            checkpointer = self._checkpointer
        if checkpointer is not None:
            checkpointer.notify()

    def dispose(self) -> None:
        """Close every connection. The store stays usable: a later commit starts a new checkpointer."""
        with self._checkpointer_lock:
            checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            checkpointer.close()
        self.engine.dispose()


def open_store(settings: Settings, *, migrate: bool = True) -> Store:
    """Open the configured database and bring its schema to the latest migration."""
    store = Store(settings.db_url, sqlite_synchronous=settings.sqlite_synchronous)
    if migrate:
        from tally.store.migrate import upgrade

        upgrade(store)
    return store
