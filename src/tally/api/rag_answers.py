"""Retrieval-augmented chat: the `rag` option of /v1/chat/completions and model aliases with RAG on by default.

The caller's bearer key decides what may be retrieved (only datanets it may use for `rag`); the retrieval is a
ledger event; the prompt numbers the sources and the answer's `[n]` citations are checked and renumbered.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from tally.api.auth import principal
from tally.api.errors import ApiError
from tally.api.state import AppState
from tally.identity import Principal
from tally.rag import RagSettings, RetrievedChunk, build_rag_messages, postprocess_citations, retrieve


class RagOption(BaseModel):
    """The `rag` field of a chat request."""

    model_config = ConfigDict(extra="allow")  # as the other request bodies: clients may send fields we do not use

    datanets: list[str] = Field(min_length=1, description="datanets to retrieve from (each must permit rag)")
    top_k: int | None = Field(None, ge=1)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"


def resolve_alias(request: Request, body: Any) -> RagOption | None:
    """The RAG option of this request: its own `rag`, or the alias its `model` names (which also sets the model)."""
    state: AppState | None = getattr(request.app.state, "tally", None)
    alias = state.settings.rag.aliases.get(body.model) if state is not None else None
    rag = body.rag
    if alias is not None:
        body.model = alias.model
        rag = rag or RagOption(datanets=alias.datanets, top_k=alias.top_k)
    if rag is not None and body.stream:
        raise ApiError(400, "stream is not supported together with rag; ask without stream", param="stream")
    return rag


async def retrieve_for(
    request: Request, body: Any, rag: RagOption, messages: list[dict[str, str]]
) -> tuple[list[RetrievedChunk], list[dict[str, str]]]:
    state: AppState | None = getattr(request.app.state, "tally", None)
    if state is None:
        raise ApiError(503, "retrieval needs the full Tally server (`tally serve`)", type_="server_error")
    who = principal(request, state)
    question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    if not question.strip():
        raise ApiError(400, "a rag request needs a user message to retrieve for", param="messages")
    settings = RagSettings.from_settings(state.settings)
    top_k = rag.top_k or settings.default_top_k

    def run(who: Principal) -> list[RetrievedChunk]:
        with state.store.transaction() as s:
            return retrieve(
                s, state.ledger, who, rag.datanets, question, top_k, rag.mode, settings=settings, refresh=True
            )

    chunks = await run_in_threadpool(run, who)
    return chunks, build_rag_messages(question, chunks)


def cite(text: str, chunks: list[RetrievedChunk]) -> tuple[str, list[dict[str, Any]]]:
    return postprocess_citations(text, chunks)
