"""The PostgreSQL engine: psycopg 3 connections that behave like Tally's SQLite ones where it matters.

Imported only when the configured database is PostgreSQL, so SQLite installs never load psycopg.
"""

from __future__ import annotations

from typing import Any

from psycopg.adapt import Dumper, PyFormat
from psycopg.types.numeric import IntBinaryDumper, IntDumper
from sqlalchemy import Engine, create_engine, event

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check_int64(obj: int) -> None:
    if not INT64_MIN <= obj <= INT64_MAX:
        raise OverflowError(f"Python int too large to convert to a 64-bit integer: {obj}")


class Int64Dumper(IntDumper):
    """Integers as psycopg sends them, except that one past 64 bits raises OverflowError, as SQLite's driver does.

    psycopg would send it as `numeric` and PostgreSQL would compare it with a BIGINT column without complaint; every
    integer column is at most 64 bits, so such a number is out of range, and the API answers OverflowError with a
    400 on either database."""

    def upgrade(self, obj: int, format: PyFormat) -> Dumper:
        _check_int64(obj)
        return super().upgrade(obj, format)


class Int64BinaryDumper(IntBinaryDumper):
    def upgrade(self, obj: int, format: PyFormat) -> Dumper:
        _check_int64(obj)
        return super().upgrade(obj, format)


def postgres_engine(url: str, lock_timeout_ms: int) -> Engine:
    engine = create_engine(url, pool_pre_ping=True)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.adapters.register_dumper(int, Int64Dumper)
        dbapi_connection.adapters.register_dumper(int, Int64BinaryDumper)
        # A writer waits for the write lock (and any row lock) at most as long as SQLite's busy timeout, then fails,
        # rather than hanging behind a stuck transaction; unless the URL or the server set a limit of their own.
        with dbapi_connection.cursor() as cursor:
            cursor.execute(
                "SELECT set_config('lock_timeout', %s, false) WHERE current_setting('lock_timeout') = '0'",
                (f"{lock_timeout_ms}ms",),
            )
        dbapi_connection.commit()  # a setting made in a transaction that rolls back would be undone

    return engine
