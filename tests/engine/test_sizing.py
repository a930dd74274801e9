"""Engine sizes from the machine: KV rows from the memory available, threads from the cores."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tally.engine import EngineConfig
from tally.engine.sizing import AUTO_MAX_SEQS, AUTO_MIN_SEQS, auto_num_seqs, auto_threads, kv_row_bytes

# SmolLM2-135M's shape: 30 layers, 9 query heads over 3 KV heads of 64
SMOL = SimpleNamespace(num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
GIB = 1 << 30


def test_a_kv_row_holds_keys_and_values_of_every_layer() -> None:
    assert kv_row_bytes(SMOL, 1024) == 2 * 30 * 3 * 64 * 1024 * 4  # 45 MiB


@pytest.mark.parametrize(
    ("available", "rows"),
    [(24 * GIB, int(24 * GIB * 0.10) // (2 * 30 * 3 * 64 * 1024 * 4)), (GIB, AUTO_MIN_SEQS), (1 << 40, AUTO_MAX_SEQS)],
)
def test_rows_are_a_share_of_the_memory_available_within_bounds(available: int, rows: int) -> None:
    assert auto_num_seqs(SMOL, 1024, available) == rows


def test_longer_sequences_get_fewer_rows() -> None:
    assert auto_num_seqs(SMOL, 4096, 24 * GIB) < auto_num_seqs(SMOL, 1024, 24 * GIB)


def test_threads_are_the_cores_this_process_may_use() -> None:
    assert auto_threads() >= 1


def test_an_engine_config_needs_at_least_one_row() -> None:
    with pytest.raises(ValueError, match="max_num_seqs must be at least 1"):
        EngineConfig(max_num_seqs=0)
