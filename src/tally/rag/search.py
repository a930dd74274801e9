"""Rank chunks across several loaded indexes: dense, BM25, or both fused. No database, no permissions.

Why separate from the service: the benchmark and the evaluation time exactly this code path on indexes in memory,
and the service adds permissions, the accepted-row check and the ledger record around it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tally.rag.fusion import rrf, score_fusion
from tally.rag.index import ChunkIndex
from tally.rag.settings import RagSettings

Key = tuple[str, int]  # (datanet, position in its index)


def rank(
    indexes: Mapping[str, ChunkIndex], query: str, query_vec: np.ndarray | None, mode: str, settings: RagSettings
) -> list[tuple[Key, float]]:
    """Fused candidates best first (at most 2 * candidates * datanets); `query_vec` is needed unless mode=bm25."""
    dense: list[tuple[Key, float]] = []
    lexical: list[tuple[Key, float]] = []
    if mode != "bm25":
        if query_vec is None:
            raise ValueError(f"mode {mode!r} needs the query's embedding")
        for slug, index in indexes.items():
            dense += [((slug, i), s) for i, s in index.dense(query_vec, settings.candidates)]
    if mode != "dense":
        for slug, index in indexes.items():
            lexical += [((slug, i), s) for i, s in index.lexical(query, settings.candidates)]
    dense.sort(key=lambda kv: (-kv[1], kv[0]))  # cosines are comparable across datanets
    lexical.sort(key=lambda kv: (-kv[1], kv[0]))
    if mode == "dense":
        return dense
    if mode == "bm25":
        return lexical
    if settings.fusion == "rrf":
        return rrf([dense, lexical], settings.rrf_k)
    return score_fusion(dense, lexical, settings.dense_weight)
