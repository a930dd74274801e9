"""The attribution record of one answer: evidence per method, contributor shares, credits, and its ledger event.

Shares are over the data part only (training rows and retrieved chunks) and sum to 1 when any method beat its
null baseline; otherwise they are empty and the data part of a fee goes to the reserve (see tally.rewards).
The adapter developer, the base model, evaluators and the pipeline's author are named in `credits`; the fee
policy decides which of them are paid per answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field

from tally.config import AttributionMode
from tally.ledger import Event

Mode = AttributionMode


class Evidence(BaseModel):
    """One piece of evidence: a training row or retrieved chunk, its score, and for spans the quoted token range."""

    model_config = ConfigDict(extra="forbid")

    row_hash: str
    datanet: str
    contribution: str
    contributor: str
    score: float
    answer_span: tuple[int, int] | None = None  # [start, end) in answer tokens (spans only)
    text: str | None = None  # the quoted text (spans only)


class MethodResult(BaseModel):
    """What one signal found: its top evidence and whether it beat its null baseline."""

    model_config = ConfigDict(extra="forbid")

    method: str
    top: list[Evidence] = Field(default_factory=list)
    score: float = 0.0  # the statistic compared with the null (method-specific; see docs/attribution.md)
    null_score: float = 0.0
    beat_null: bool = False
    weight: float = 0.0  # its weight in the combined shares
    seconds: float = 0.0
    # `gradient` in `fast` mode: the query covered the top this many adapted layers (left out of the JSON otherwise,
    # so records written before it keep their hash)
    layers: int | None = Field(None, exclude_if=lambda v: v is None)
    # `gradient` and `representation` whose query started from the hidden states the engine kept while it answered,
    # entering this layer (the served weights' states; absent where the query ran its own whole forward)
    states_layer: int | None = Field(None, exclude_if=lambda v: v is None)


class Citation(BaseModel):
    """One (sentence, source) pair of a RAG answer: measured (the source carried the sentence) or marked (the model
    wrote [n] there), and whether the two agree. Offsets are characters of the answer as returned (markers outside
    1..N removed); see docs/attribution.md#sentence-citations."""

    model_config = ConfigDict(extra="forbid")

    sentence: tuple[int, int]  # [start, end) characters of the answer
    chunk: int  # 0-based position in the retrieved list
    source: int  # its number in the prompt (chunk + 1), the n of a marker [n]
    row_hash: str
    datanet: str
    snapshot: str
    contribution: str
    contributor: str
    drop: float | None  # nats the sentence loses without the chunk (None: not measured, attribution off)
    method: str | None  # leave_one_out | surrogate (None: not measured)
    measured: bool | None  # drop >= the calibrated threshold, in a claim holding no guess (None: not measured)
    marker: bool  # the model wrote [source] in this sentence
    marker_agrees: bool | None  # marker and measurement agree (None: no marker, or nothing measured)


class Share(BaseModel):
    model_config = ConfigDict(extra="forbid")

    account: str
    share: float
    contributions: list[str] = Field(default_factory=list)


class Credits(BaseModel):
    """Who else shaped the answer: paid or not per the fee policy."""

    model_config = ConfigDict(extra="forbid")

    developer: str | None = None  # the account that trained the adapter
    base_model: str = ""
    base_model_hash: str | None = None
    evaluators: list[str] = Field(default_factory=list)  # eval datanets' contributors
    pipeline_author: str | None = None


class AttributionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str  # the inference id (the response's `id`)
    mode: Mode
    model: str
    adapter_hash: str | None
    prompt_hash: str
    answer_hash: str
    prompt_tokens: int
    completion_tokens: int
    methods: dict[str, MethodResult]
    shares: list[Share]
    credits: Credits
    requested_by: str | None = None
    created_at: str
    # RAG answers only; left out of the JSON when empty, so records written before citations keep their hash
    citations: list[Citation] = Field(default_factory=list, exclude_if=lambda v: not v)

    def seen_by(self, readable: set[str], label: Callable[[str], str]) -> AttributionRecord:
        """The record as a reader who may read only `readable` datanets sees it: evidence from any other datanet
        keeps its contributor and score (the shares stay explainable) but loses the quoted text, the row and
        contribution hashes (a short row's hash could be tested against a guess) and the datanet's name, shown as
        its ledger commitment (`label`)."""
        methods = {}
        for name, result in self.methods.items():
            top = [
                e
                if e.datanet in readable
                else e.model_copy(
                    update={"datanet": label(e.datanet), "row_hash": "", "contribution": "", "text": None}
                )
                for e in result.top
            ]
            methods[name] = result.model_copy(update={"top": top})
        citations = [
            c
            if c.datanet in readable
            else c.model_copy(update={"datanet": label(c.datanet), "row_hash": "", "contribution": "", "snapshot": ""})
            for c in self.citations
        ]
        return self.model_copy(update={"methods": methods, "citations": citations})

    def share_map(self) -> dict[str, float]:
        return {s.account: s.share for s in self.shares}

    def summary(self) -> dict[str, object]:
        """The `attribution` field of an API response: short, the full record is one GET away."""
        return {
            "id": self.id,
            "mode": self.mode,
            "contributors": [{"account": s.account, "share": round(s.share, 6)} for s in self.shares[:10]],
            "methods": {k: m.beat_null for k, m in self.methods.items()},
            "url": f"/v1/attributions/{self.id}",
        }


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class InferenceAttributed(Event):
    """One answer's attribution record, committed as a whole (its hash) with the parts a reader needs."""

    event_type: ClassVar[str] = "attribution.inference_attributed"
    inference: str
    model: str
    adapter_hash: str | None
    prompt_hash: str
    answer_hash: str
    record_hash: str
    mode: str
    shares: dict[str, float]
    beat_null: dict[str, bool]
