"""Shared fixtures: an isolated data directory and an opened ledger."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from sqlalchemy.engine import make_url

from tally.config import Settings, load_settings
from tally.ledger import Event, Ledger, open_ledger
from tally.store import Store, open_store


class Note(Event):
    """A test-only event type."""

    event_type: ClassVar[str] = "test.note"
    text: str


# Set by tests/postgres/run.sh: the URL of a throwaway cluster's `postgres` database. When set, every test that
# uses `settings` gets a new empty database there instead of a SQLite file in its data directory.
TEST_POSTGRES = os.environ.get("TALLY_TEST_POSTGRES") or None
_database_numbers = itertools.count()

on_postgres = pytest.mark.skipif(TEST_POSTGRES is None, reason="needs PostgreSQL (tests/postgres/run.sh)")
sqlite_only = pytest.mark.skipif(TEST_POSTGRES is not None, reason="SQLite-specific")


@pytest.fixture
def postgres_database() -> Iterator[str | None]:
    """A new empty PostgreSQL database for one test, dropped after it (None when not running on PostgreSQL)."""
    if TEST_POSTGRES is None:
        yield None
        return
    import psycopg

    base = make_url(TEST_POSTGRES)
    name = f"t_{os.getpid()}_{next(_database_numbers)}"
    params = {"host": base.query.get("host"), "port": base.port, "user": base.username, "dbname": base.database}
    admin = psycopg.connect(**{k: v for k, v in params.items() if v is not None}, autocommit=True)
    try:
        admin.execute(f'CREATE DATABASE "{name}"')
        yield base.set(database=name).render_as_string(hide_password=False)
        # FORCE: a store a test left open (or a subprocess it killed) must not keep the database alive.
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres_database: str | None) -> Settings:
    """Settings pointing at a fresh data directory (and, under tests/postgres/run.sh, a fresh PostgreSQL
    database); the environment too, so CLI commands and subprocesses see the same."""
    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALLY_DATA_DIR", str(data))
    monkeypatch.delenv("TALLY_CONFIG", raising=False)
    if postgres_database is None:
        monkeypatch.delenv("TALLY_DATABASE_URL", raising=False)
    else:
        monkeypatch.setenv("TALLY_DATABASE_URL", postgres_database)
    monkeypatch.setenv("TALLY_CHAIN__ENABLED", "false")  # the chain's own tests turn it on
    return load_settings()


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


# fp32 results depend on the CPU's kernels (AVX2 or AVX-512, BLAS blocking, batch shapes): rounding differences grow
# with the values' magnitude and the reduction lengths. Measured: up to 6e-4 on logits of magnitude ~2.5 on an AVX2
# EPYC, where an adapter moves the same logits by ~3. The bound is relative to the reference's largest value.
RELATIVE_TOL = 2e-3


def max_diff(got: torch.Tensor, ref: torch.Tensor, rel: float = RELATIVE_TOL) -> tuple[float, float]:
    """(largest absolute difference, the bound it must stay under), compared in float64."""
    got64, ref64 = got.detach().double(), ref.detach().double()
    assert got64.shape == ref64.shape, (got64.shape, ref64.shape)
    bound = rel * max(ref64.abs().max().item(), 1e-12)
    return (got64 - ref64).abs().max().item(), bound


def assert_close(got: torch.Tensor, ref: torch.Tensor, what: str = "", rel: float = RELATIVE_TOL) -> float:
    """Every float comparison of the suite: a bound relative to the reference's magnitude, so it holds on any
    x86-64 CPU (AVX2 without AVX-512, other BLAS paths) while staying far below what a real bug changes."""
    diff, bound = max_diff(got, ref, rel)
    assert diff <= bound, f"{what}: max abs diff {diff:.3g} > {bound:.3g} (relative {rel} of max |ref|)"
    return diff
