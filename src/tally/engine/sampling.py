"""Sampling parameters and the per-sequence token choice (greedy, temperature, top-p, seeded)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tally.engine.errors import RequestValidationError


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False  # benchmarks: generate exactly max_tokens
    record_logits: bool = False  # tests: keep each step's logits
    # prefix caching reuses keys and values only between requests with the same salt (None: shared by all)
    cache_salt: str | None = None
    # the hidden states entering the engine's states layer (EngineConfig.states_from_top) of every token it runs,
    # on the last event: attribution's top-layer gradient starts from them instead of running the layers below
    keep_states: bool = False
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise RequestValidationError("max_tokens must be at least 1", param="max_tokens")
        if not 0.0 <= self.temperature <= 2.0:
            raise RequestValidationError("temperature must be between 0 and 2", param="temperature")
        if not 0.0 < self.top_p <= 1.0:
            raise RequestValidationError("top_p must be in (0, 1]", param="top_p")
        if len(self.stop) > 4 or any(not s for s in self.stop):
            raise RequestValidationError("stop takes at most 4 non-empty strings", param="stop")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def make_generator(params: SamplingParams, device: torch.device) -> torch.Generator | None:
    """A private generator per sequence: a seeded request gives the same tokens whatever else is in the batch."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
    if params.seed is not None:
        gen.manual_seed(params.seed)
    else:
        gen.seed()
    return gen


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """One token from one row of logits."""
    if params.greedy or generator is None:
        return int(torch.argmax(logits).item())
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        cum = torch.cumsum(sorted_p, dim=-1)
        keep = cum - sorted_p < params.top_p  # the smallest prefix whose mass reaches top_p
        sorted_p = sorted_p * keep
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice].item())
    return int(torch.multinomial(probs, 1, generator=generator).item())
