"""Engine sizes chosen from the machine when the settings leave them at 0 ("auto").

KV cache rows (`max_num_seqs`): each row reserves `max_model_len` tokens of keys and values in every layer, so the
row count is what a share of the memory available at start holds, between a floor that keeps batching worthwhile and
a ceiling past which a CPU step gets no faster per token. Threads: every core (the step is one matrix product after
another; the HTTP loop's work per token is small next to it, and is handed over once per step).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

AUTO_MEMORY_SHARE = 0.10  # of the memory available at start, for the KV cache
AUTO_MIN_SEQS = 8
AUTO_MAX_SEQS = 64


def available_memory() -> int | None:
    """Bytes the kernel says are available (MemAvailable), or None where /proc/meminfo is missing."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def kv_row_bytes(model_config: Any, max_model_len: int, dtype_bytes: int = 4) -> int:
    """Bytes of one KV cache row: keys and values for `max_model_len` tokens in every layer."""
    heads = int(model_config.num_attention_heads)
    head_dim = int(getattr(model_config, "head_dim", None) or model_config.hidden_size // heads)
    kv_heads = int(getattr(model_config, "num_key_value_heads", None) or heads)
    return 2 * int(model_config.num_hidden_layers) * kv_heads * head_dim * max_model_len * dtype_bytes


def auto_num_seqs(model_config: Any, max_model_len: int, available: int | None = None) -> int:
    """KV rows for a share of the available memory, clamped to [AUTO_MIN_SEQS, AUTO_MAX_SEQS]."""
    available = available_memory() if available is None else available
    if available is None:
        return AUTO_MIN_SEQS * 2
    rows = int(available * AUTO_MEMORY_SHARE) // kv_row_bytes(model_config, max_model_len)
    return max(AUTO_MIN_SEQS, min(AUTO_MAX_SEQS, rows))


def auto_threads() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def resolve_num_seqs(max_num_seqs: int, model_dir: Path, max_model_len: int) -> int:
    """The setting, or (0) the automatic size for the model in `model_dir` (its config.json only, no weights)."""
    if max_num_seqs > 0:
        return max_num_seqs
    from transformers import AutoConfig

    return auto_num_seqs(AutoConfig.from_pretrained(str(model_dir)), max_model_len)
