"""One request in the engine: its tokens, state, incremental detokenisation, stop handling and output events."""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tally.engine.sampling import SamplingParams


class SeqState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class RequestOutput:
    """One streamed event: new text and tokens since the last event; `finish_reason` set on the last one."""

    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "cancelled", "error"
    usage: Usage | None = None
    error: str | None = None
    error_kind: str | None = None  # with finish_reason "error": the taxonomy kind (invalid for a broken adapter)
    logits: list[torch.Tensor] | None = None  # every step's logits, only with record_logits, on the last event
    # with keep_states, on the last event: [tokens run, hidden] entering the engine's states layer, for the prompt
    # and every output token but the last (never run); None where the engine keeps none
    states: torch.Tensor | None = None
    # what served it, on every event: the content hash of the adapter weights that ran (None: the base model)
    # and the directory they were read from; attribution credits these, never a later lookup by name
    adapter_id: str | None = None
    adapter_path: Path | None = None


@dataclass
class Sequence:
    request_id: str
    adapter: str | None  # None: the base model
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[RequestOutput], None]
    arrival: float = field(default_factory=time.monotonic)
    state: SeqState = SeqState.WAITING
    output: list[int] = field(default_factory=list)
    row: int | None = None
    slot: int = 0
    adapter_id: str | None = None
    adapter_path: Path | None = None
    computed: int = 0  # tokens already in the KV cache
    cancelled: bool = False
    generator: torch.Generator | None = None
    lookup_counted: bool = False
    blocked_steps: int = 0  # steps spent waiting while the adapter cap or slots kept it out
    first_token_at: float | None = None
    text: str = ""
    emitted: int = 0  # characters of `text` already sent
    logits: list[torch.Tensor] = field(default_factory=list)
    keep_states: bool = False  # asked for, and the engine keeps states
    states: list[torch.Tensor] = field(default_factory=list)  # [tokens, hidden] chunks, in token order
    finish_reason: str | None = None

    @property
    def label(self) -> str:
        return self.adapter or "base"

    @property
    def in_prefill(self) -> bool:
        return self.computed < len(self.prompt)

    @property
    def total_len(self) -> int:
        return len(self.prompt) + len(self.output)


class Detokenizer:
    """Incremental text: decode the generated ids; hold back an unfinished UTF-8 character and a stop prefix."""

    def __init__(self, tokenizer: Any, eos_ids: set[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids

    def append(self, seq: Sequence, token: int) -> RequestOutput | None:
        """Add one sampled token; returns the event to send (None when nothing new can be shown yet)."""
        seq.output.append(token)
        p = seq.params
        finish: str | None = None
        if token in p.stop_token_ids or (token in self.eos_ids and not p.ignore_eos):
            finish = "stop"
            ids = seq.output[:-1]
        else:
            ids = seq.output
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        hold = 0
        if p.stop:
            for s in p.stop:
                at = text.find(s, max(0, seq.emitted - len(s) + 1))
                if at != -1:
                    text, finish = text[:at], "stop"
                    break
            else:
                hold = max(len(s) for s in p.stop) - 1
        if finish is None and len(seq.output) >= p.max_tokens:
            finish = "length"
        if finish is None and text.endswith("\ufffd"):
            hold = max(hold, 1)
        seq.text = text
        end = len(text) if finish is not None else max(seq.emitted, len(text) - hold)
        delta = text[seq.emitted : end]
        seq.emitted = end
        if finish is not None:
            seq.finish_reason = finish
            return self.final(seq, delta, [token])
        return RequestOutput(seq.request_id, delta, [token], adapter_id=seq.adapter_id, adapter_path=seq.adapter_path)

    @staticmethod
    def final(
        seq: Sequence,
        text: str,
        tokens: list[int],
        reason: str | None = None,
        error: str | None = None,
        error_kind: str | None = None,
    ) -> RequestOutput:
        seq.finish_reason = reason or seq.finish_reason
        return RequestOutput(
            seq.request_id,
            text,
            tokens,
            finish_reason=seq.finish_reason,
            usage=Usage(len(seq.prompt), len(seq.output)),
            error=error,
            error_kind=error_kind,
            logits=seq.logits if seq.params.record_logits else None,
            states=torch.cat(seq.states) if seq.keep_states and seq.states else None,
            adapter_id=seq.adapter_id,
            adapter_path=seq.adapter_path,
        )
