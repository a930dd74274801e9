"""Turn one accepted datanet row into one retrievable text chunk.

Why one chunk per row: a row is the unit a contributor is credited for and a citation points at, so a retrieved
chunk maps back to exactly one row hash. Documents are already chunked on upload (one chunk per row); an
instruction pair or a conversation is short enough to be one chunk. Labels ("Question:", "Answer:") are kept
because they help both BM25 (no harm) and the reader of a citation.
"""

from __future__ import annotations

from typing import Any

CHUNKER_VERSION = 1  # bump when chunk_text changes: embeddings keyed by row hash are then recomputed

_ROLE = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}


def chunk_text(content: dict[str, Any]) -> str:
    """The text of a normalised row (instruction, chat or documents form; see docs/datanet-formats.md)."""
    if "text" in content:
        return str(content["text"])
    if "messages" in content:
        return "\n".join(f"{_ROLE.get(m['role'], m['role'])}: {m['content']}" for m in content["messages"])
    question = content["instruction"] if not content.get("input") else f"{content['instruction']}\n{content['input']}"
    return f"Question: {question}\nAnswer: {content['output']}"
