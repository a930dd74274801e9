"""Retrieval-augmented generation over datanets: per-snapshot indexes, permissioned hybrid retrieval, citations."""

from tally.rag.answers import build_rag_messages, postprocess_citations
from tally.rag.events import RetrievalPerformed
from tally.rag.service import (
    BuildReport,
    IndexMissingError,
    IndexStatus,
    RetrievedChunk,
    build_index,
    index_status,
    retrieve,
)
from tally.rag.settings import RagSettings

__all__ = [
    "BuildReport",
    "IndexMissingError",
    "IndexStatus",
    "RagSettings",
    "RetrievalPerformed",
    "RetrievedChunk",
    "build_index",
    "build_rag_messages",
    "index_status",
    "postprocess_citations",
    "retrieve",
]
