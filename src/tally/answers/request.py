"""The typed request and result of one answer, independent of the door it came in by (HTTP, CLI, a test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tally.config import AttributionMode

if TYPE_CHECKING:
    import torch

    from tally.attribution import AttributionRecord
    from tally.engine import SamplingParams
    from tally.identity import Principal
    from tally.rag import RetrievedChunk

Role = Literal["system", "user", "assistant", "tool", "developer"]


class RagOption(BaseModel):
    """Retrieval for a chat answer: the `rag` field of a chat request, `--rag` of `tally ask`, or a model alias."""

    model_config = ConfigDict(extra="allow")  # as the other request bodies: clients may send fields we do not use

    datanets: list[str] = Field(min_length=1, description="datanets to retrieve from (each must permit rag)")
    top_k: int | None = Field(None, ge=1)
    mode: Literal["hybrid", "bm25", "dense"] = "hybrid"


@dataclass(frozen=True)
class Sampling:
    max_tokens: int | None = None  # None: what fits, up to 512 for chat; 16 for a completion (OpenAI's default)
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass
class AnswerRequest:
    """One question. Exactly one of `messages` (chat: role and text content) or `prompt` (a completion)."""

    model: str
    messages: list[dict[str, str]] | None = None
    prompt: str | list[int] | None = None
    sampling: Sampling = field(default_factory=Sampling)
    rag: RagOption | None = None
    attribution: AttributionMode | None = None  # None: the model's default from settings
    requester: Principal | None = None  # who asked (None: anonymous); retrieval needs one
    id: str | None = None  # the inference id; one is made when None
    stream: bool = False


@dataclass
class Prepared:
    """A request that passed every check: what generation needs, and what the answer's last steps need."""

    request: AnswerRequest
    id: str
    model: str  # the model that answers (an alias resolved)
    prompt_ids: list[int]
    params: SamplingParams  # checked by the engine once, in `prepare`
    mode: AttributionMode
    chunks: list[RetrievedChunk] = field(default_factory=list)
    question: str | None = None  # with retrieval: the question the sources were retrieved for
    credit_hold: int | None = None  # the requester's credit set aside for this answer (released once settled)

    @property
    def max_tokens(self) -> int:
        return self.params.max_tokens


@dataclass(frozen=True)
class Delta:
    """New text of a streamed answer."""

    text: str


@dataclass
class Generated:
    """What the engine produced, and which weights produced it."""

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    adapter_id: str | None
    adapter_path: Path | None
    # the engine's hidden states entering `states_layer` for the prompt and the answer (attribution's fast query
    # starts from them); None where none were kept
    states: torch.Tensor | None = None
    states_layer: int | None = None


@dataclass
class AnswerResult:
    id: str
    model: str
    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int]
    adapter_id: str | None = None  # the weights that answered (None: the base model)
    retrieved: int | None = None  # sources retrieved (None: no retrieval); `citations` lists those the answer cites
    citations: list[dict[str, Any]] = field(default_factory=list)
    record: AttributionRecord | None = None
    receipt: int | None = None  # the ledger entry of the record

    @property
    def attribution(self) -> dict[str, Any] | None:
        """The short summary that API responses carry; the full record is one GET away."""
        if self.record is None or self.receipt is None:
            return None
        return {
            **self.record.summary(),
            "receipt": self.receipt,
            "receipt_url": f"/v1/ledger/entries/{self.receipt}/receipt",
        }


__all__ = ["AnswerRequest", "AnswerResult", "Delta", "Generated", "Prepared", "RagOption", "Role", "Sampling"]
