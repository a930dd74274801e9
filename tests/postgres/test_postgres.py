"""What PostgreSQL does differently from SQLite: the write lock, readers' snapshots, 64-bit columns, migrations down
to nothing and back, and verification catching a tampered row. Runs only under tests/postgres/run.sh."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from tests.conftest import append_notes, on_postgres

from tally.config import Settings
from tally.ledger import Ledger, VerificationError, bundles, open_ledger, verify_ledger
from tally.store import Store, open_store
from tally.store.db import WRITE_LOCK_KEY, normalise_url

pytestmark = on_postgres


def test_urls_without_a_driver_mean_psycopg(settings: Settings) -> None:
    assert normalise_url("postgresql://u:p@db:5432/tally") == "postgresql+psycopg://u:p@db:5432/tally"
    assert normalise_url("postgres://u@db/tally") == "postgresql+psycopg://u@db/tally"
    assert normalise_url("sqlite:///x.db") == "sqlite:///x.db"
    plain = settings.db_url.replace("postgresql+psycopg://", "postgresql://")
    store = Store(plain)
    assert store.is_postgres and store.engine.dialect.driver == "psycopg"
    store.dispose()


def test_a_number_past_64_bits_is_out_of_range_as_on_sqlite(ledger: Ledger) -> None:
    """The API answers OverflowError with a 400; psycopg alone would send the number as numeric and find nothing."""
    with pytest.raises(OverflowError):
        ledger.entry(10**30)
    with ledger.store.read() as s:
        assert s.execute(text("SELECT :n"), {"n": 2**63 - 1}).scalar_one() == 2**63 - 1
        assert s.execute(text("SELECT :n"), {"n": -(2**63)}).scalar_one() == -(2**63)


def test_write_transactions_take_turns(store: Store) -> None:
    """A second writer waits at its start until the first commits, then sees the first one's work."""
    with store.transaction() as s:
        s.execute(text("CREATE TABLE turns (n INTEGER)"))
    seen: list[int] = []
    entered = threading.Event()

    def second() -> None:
        with store.transaction() as s:
            entered.set()
            seen.append(s.execute(text("SELECT count(*) FROM turns")).scalar_one())

    with store.transaction() as s:
        s.execute(text("INSERT INTO turns VALUES (1)"))
        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(0.5)  # blocked on the advisory lock
        with store.read() as r:
            waiting = r.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND ((classid::bigint << 32) | objid::bigint) = :key"
                ),
                {"key": WRITE_LOCK_KEY & 0xFFFFFFFFFFFFFFFF},
            ).scalar_one()
        assert waiting == 1
    thread.join(10)
    assert entered.is_set() and seen == [1]


def test_a_writer_that_waits_too_long_for_the_lock_fails(settings: Settings, store: Store) -> None:
    impatient = Store(settings.db_url, lock_timeout_ms=200)
    with store.transaction():
        t = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"), impatient.transaction():
            pass
        assert time.monotonic() - t < 5
    with impatient.transaction() as s:  # free again
        assert s.execute(text("SHOW lock_timeout")).scalar_one() == "200ms"
    impatient.dispose()
    with store.read() as s:
        assert s.execute(text("SHOW lock_timeout")).scalar_one() == "30s"


def test_a_reader_keeps_its_snapshot_while_the_log_grows(ledger: Ledger) -> None:
    append_notes(ledger, 10)
    with ledger.store.read() as r:
        before = ledger.size(r)
        append_notes(ledger, 5)  # commits while the read session is open
        assert ledger.size(r) == before  # the same snapshot, as a SQLite read transaction has
        assert ledger.root(session=r) == ledger.root(before)
    assert ledger.size() == before + 5


def test_append_takes_the_lock_in_a_session_that_lacks_it(ledger: Ledger) -> None:
    """A session that did not come from Store.transaction() still appends one at a time."""
    from tests.conftest import Note

    with ledger.store._write_sessions() as s, s.begin():  # no lock yet
        ledger.append(s, Note(text="x"), actor="alice")
        held = s.execute(
            text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = pg_backend_pid()")
        ).scalar_one()
    assert held == 1
    assert verify_ledger(ledger).size == 2


def test_counters_and_sequence_numbers_are_64_bit(store: Store) -> None:
    with store.read() as s:
        types = dict(
            s.execute(
                text(
                    "SELECT table_name || '.' || column_name, data_type FROM information_schema.columns "
                    "WHERE table_schema = current_schema() AND (column_name IN ('ledger_seq', 'seq', 'size') "
                    "OR column_name LIKE 'max_%' OR table_name IN ('ledger_nodes', 'rewards_accrual_lines', "
                    "'rewards_credit_moves') AND column_name = 'id')"
                )
            ).all()
        )
    assert len(types) >= 12 and all(t == "bigint" for t in types.values()), types


def test_migrations_go_down_to_nothing_and_back(settings: Settings) -> None:
    from alembic import command

    from tally.store.migrate import alembic_config, current_revision, head_revision

    store = open_store(settings)
    command.downgrade(alembic_config(store), "base")
    with store.read() as s:
        left = s.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")
        ).scalars()
        assert set(left) <= {"alembic_version"}
    command.upgrade(alembic_config(store), "head")
    assert current_revision(store) == head_revision()
    ledger = open_ledger(settings, store)
    append_notes(ledger, 3)
    assert verify_ledger(ledger).size == 4
    store.dispose()


def test_verification_catches_an_edited_entry(ledger: Ledger) -> None:
    append_notes(ledger, 20, prefix="marker")
    ledger.checkpoint()
    assert verify_ledger(ledger).size == 21
    with ledger.store.transaction() as s:
        # entry 0 (the log's creation) was its own batch: entries 1..20 share the bundle that starts at 1
        count, blob = s.execute(text("SELECT entry_count, entries FROM ledger_bundles WHERE seq = 1")).one()
        bodies = bundles.unpack(bytes(blob), count)
        assert b"marker-6" in bodies[6]
        bodies[6] = bodies[6].replace(b"marker-6", b"Marker-6")
        s.execute(text("UPDATE ledger_bundles SET entries = :b WHERE seq = 1"), {"b": bundles.pack(bodies)})
    with pytest.raises(VerificationError) as info:
        verify_ledger(ledger)
    assert (info.value.reason, info.value.index) == ("leaf_mismatch", 7)


def test_processes_opening_a_new_database_at_once_migrate_it_once(settings: Settings) -> None:
    """Every process migrates on start; on PostgreSQL they take turns on the write lock instead of colliding."""
    code = (
        "from tally.config import load_settings; from tally.ledger import open_ledger; "
        "from tally.store import open_store; s = load_settings(); st = open_store(s); open_ledger(s, st); st.dispose()"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    store = open_store(settings)
    assert open_ledger(settings, store).size() == 1  # one LogCreated
    store.dispose()
