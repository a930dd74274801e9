"""Combine ranked lists from the dense and the BM25 retriever into one.

Two ways, both measured (docs/rag.md): reciprocal rank fusion, score(d) = sum over lists of 1 / (k + rank), which
needs no calibration between cosine and BM25 scales; and min-max normalised score fusion, w * dense + (1 - w) *
bm25, which keeps how far ahead a hit is. Ties are broken by key so results are deterministic.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def rrf(lists: Sequence[Sequence[tuple[K, float]]], k: int = 60) -> list[tuple[K, float]]:
    """Reciprocal rank fusion of lists sorted best first; returns (key, fused score) best first."""
    fused: dict[K, float] = {}
    for ranked in lists:
        for rank, (key, _) in enumerate(ranked, start=1):
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(fused.items(), key=lambda kv: (-kv[1], str(kv[0])))


def _minmax(ranked: Sequence[tuple[K, float]]) -> dict[K, float]:
    if not ranked:
        return {}
    scores = [s for _, s in ranked]
    lo, hi = min(scores), max(scores)
    span = hi - lo
    return {key: (s - lo) / span if span > 0 else 1.0 for key, s in ranked}


def score_fusion(
    dense: Sequence[tuple[K, float]], lexical: Sequence[tuple[K, float]], dense_weight: float = 0.5
) -> list[tuple[K, float]]:
    """Weighted sum of min-max normalised scores; a key missing from one list scores 0 there."""
    d, b = _minmax(dense), _minmax(lexical)
    fused = {key: dense_weight * d.get(key, 0.0) + (1 - dense_weight) * b.get(key, 0.0) for key in d.keys() | b.keys()}
    return sorted(fused.items(), key=lambda kv: (-kv[1], str(kv[0])))
