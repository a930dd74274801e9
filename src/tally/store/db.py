"""SQLAlchemy engine and sessions. SQLite (WAL) by default, PostgreSQL by URL.

pysqlite's own transaction handling starts transactions late and lets SELECTs run outside them; we turn it off
and emit BEGIN ourselves so every session is one real transaction. `Store.transaction()` begins IMMEDIATE on
SQLite, taking the write lock up front, so a read-then-write in one transaction never fails on upgrade.

PostgreSQL gets the same contract: a write transaction runs at READ COMMITTED and its first statement takes a
transaction-level advisory lock (`pg_advisory_xact_lock`), so write transactions run one at a time, each seeing
everything committed before it, and cannot deadlock with each other; the lock goes with the commit or rollback.
Read sessions run at REPEATABLE READ: like a SQLite read transaction, every query of one session sees the same
snapshot, so a reader never sees half of a writer's work across two queries. Readers never wait for writers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Connection, Engine, Integer, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from tally.config import Settings
from tally.store.checkpoint import BACKSTOP_PAGES, WAL_SIZE_LIMIT, WalCheckpointer


class Base(DeclarativeBase):
    pass


SQLITE_PAGE_SIZE = 16384
BUSY_TIMEOUT_MS = 30_000  # how long a writer waits for another's lock before it fails (SQLite and PostgreSQL)

# A 64-bit integer column. SQLite's INTEGER is already 64 bits (and INTEGER PRIMARY KEY is the rowid), PostgreSQL's
# is 32: counts and sequence numbers that may pass 2^31 are BIGINT there.
BigInt = BigInteger().with_variant(Integer(), "sqlite")

# The key of the advisory lock every PostgreSQL write transaction holds: b"tally\0\0\1" as a signed 64-bit integer.
# Advisory locks are per database, so databases on one server do not share it.
WRITE_LOCK_KEY = int.from_bytes(b"tally\0\0\1", "big", signed=True)
WRITE_LOCK_SQL = f"SELECT pg_advisory_xact_lock({WRITE_LOCK_KEY})"
_WRITE_LOCK_HELD = "tally_write_lock"  # Session.info key: the transaction that took the lock


def normalise_url(url: str) -> str:
    """`postgresql://` and `postgres://` mean PostgreSQL through psycopg 3, the driver Tally installs."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": BUSY_TIMEOUT_MS / 1000})

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
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
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

    def __init__(self, url: str, *, sqlite_synchronous: str = "FULL", lock_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.url = url = normalise_url(url)
        self._checkpointer: WalCheckpointer | None = None
        self._wal_path: str | None = None
        self._checkpointer_lock = threading.Lock()
        backend = make_url(url).get_backend_name()
        self.is_sqlite = backend == "sqlite"
        self.is_postgres = backend == "postgresql"
        if self.is_sqlite:
            database = make_url(url).database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = _sqlite_engine(url, sqlite_synchronous)
            if database and database != ":memory:" and not database.startswith("file:"):
                self._wal_path = str(Path(database).resolve())
        elif self.is_postgres:
            from tally.store.postgres import postgres_engine

            self.engine = postgres_engine(url, lock_timeout_ms)
        else:
            self.engine = create_engine(url, pool_pre_ping=True)
        reader, writer = self.engine, self.engine
        if self.is_sqlite:
            writer = self.engine.execution_options(tally_immediate=True)
        elif self.is_postgres:
            # Explicit, whatever the server's default_transaction_isolation says: the write lock relies on each
            # statement after it taking a new snapshot, the readers on one snapshot for the whole session.
            reader = self.engine.execution_options(isolation_level="REPEATABLE READ")
            writer = self.engine.execution_options(isolation_level="READ COMMITTED")
        self._sessions = sessionmaker(reader, expire_on_commit=False)
        self._write_sessions = sessionmaker(writer, expire_on_commit=False)
        # PostgreSQL in autocommit: no BEGIN and ROLLBACK round trips around a lone query.
        self._bare = self.engine.execution_options(isolation_level="AUTOCOMMIT") if self.is_postgres else self.engine
        if self._wal_path is not None:
            # The session's after_commit, not the engine's commit event: the latter fires before SQLite commits,
            # and a checkpoint started then would leave this transaction in the WAL.
            event.listen(self._write_sessions, "after_commit", self._after_commit)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A read-write transaction: committed on success, rolled back on any exception. It holds the database's
        write lock from its start (BEGIN IMMEDIATE on SQLite, the advisory lock on PostgreSQL) to its end."""
        with self._write_sessions() as session, session.begin():
            if self.is_postgres:
                self.lock_for_write(session)
            yield session

    def connect(self) -> Connection:
        """A bare connection for reads that need no snapshot (each query is its own; use `read()` for several
        that must agree). Close it, or use it as a context manager."""
        return self._bare.connect()

    def lock_for_write(self, session: Session) -> None:
        """Make sure `session`'s transaction holds the write lock, waiting for it if another transaction has it.

        On PostgreSQL a no-op when this transaction took it already; otherwise (a session that did not come from
        `transaction()`) the lock is taken now, held to the end of the transaction. On SQLite the first write takes
        the database's lock (at BEGIN IMMEDIATE in a `transaction()`), so there is nothing to do."""
        if not self.is_postgres:
            return
        conn = session.connection()
        current = conn.get_transaction()
        if current is not None and session.info.get(_WRITE_LOCK_HELD) is current:
            return
        conn.exec_driver_sql(WRITE_LOCK_SQL)
        if not conn.in_nested_transaction():  # a savepoint's rollback would release a lock it took
            session.info[_WRITE_LOCK_HELD] = conn.get_transaction()

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
