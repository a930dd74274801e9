"""Shared fixtures: an isolated data directory and an opened ledger."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from tally.config import Settings, load_settings
from tally.ledger import Event, Ledger, open_ledger
from tally.store import Store, open_store


class Note(Event):
    """A test-only event type."""

    event_type: ClassVar[str] = "test.note"
    text: str


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings pointing at a fresh data directory; the environment too, so CLI commands see the same."""
    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALLY_DATA_DIR", str(data))
    monkeypatch.delenv("TALLY_CONFIG", raising=False)
    monkeypatch.delenv("TALLY_DATABASE_URL", raising=False)
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
