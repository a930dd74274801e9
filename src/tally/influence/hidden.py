"""Representation of an example: the mean final hidden state over the positions that predict its answer tokens.

Captured by a forward hook on the decoder (its `last_hidden_state` is already normalised), so the factory's final
index pass and a serving-time query get it from the forward they already run. Only answer-predicting positions
count: the prompt is shared by many rows and would drown the part that differs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

IGNORE = -100


def decoder_of(model: nn.Module) -> nn.Module:
    wrapped: Any = model
    base: Any = wrapped.get_base_model() if hasattr(wrapped, "get_base_model") else wrapped
    decoder: nn.Module = base.get_decoder()
    return decoder


class HiddenCapture:
    """Context manager; `begin(labels)` before a forward, `result()` after: (batch, hidden) means."""

    def __init__(self, model: nn.Module) -> None:
        self.decoder = decoder_of(model)
        self._handle: Any = None
        self._labels: torch.Tensor | None = None
        self._out: torch.Tensor | None = None

    def __enter__(self) -> HiddenCapture:
        self._handle = self.decoder.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def begin(self, labels: torch.Tensor) -> None:
        self._labels, self._out = labels, None

    def result(self) -> torch.Tensor:
        if self._out is None:
            raise RuntimeError("no forward ran since begin()")
        out, self._out = self._out, None
        return out

    def _hook(self, _: nn.Module, __: Any, output: Any) -> None:
        if self._labels is None:
            return
        hidden = output.last_hidden_state.detach().float()[:, :-1]
        keep = (self._labels[:, 1:] != IGNORE).float().unsqueeze(-1)
        self._out = (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        self._labels = None
