"""The RAG ledger event: every retrieval is recorded, so attribution and rewards can credit retrieved rows.

Why the query's hash and not its text: the ledger is publicly checkable and a query may be private; whoever holds
the query can prove it matches. Scores are rounded to 6 decimals so the canonical JSON is stable across platforms.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict

from tally.ledger import Event


class SearchedDatanet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    datanet: str
    snapshot: str  # the snapshot whose index was searched
    latest: str  # the datanet's latest snapshot; differs from `snapshot` when the index was stale


class RetrievedRow(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    rank: int
    datanet: str
    snapshot: str
    row_hash: str
    contribution: str
    contributor: str
    score: float


class RetrievalPerformed(Event):
    event_type: ClassVar[str] = "rag.retrieval"
    query_hash: str  # hex SHA-256 of the query's UTF-8 bytes
    mode: str  # hybrid | bm25 | dense
    top_k: int
    datanets: list[SearchedDatanet]
    chunks: list[RetrievedRow]
