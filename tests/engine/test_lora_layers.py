"""The kernels and the wrapper against a naive per-token reference: mixed ranks, padding, slot reuse."""

from __future__ import annotations

import torch
from tests.engine.conftest import assert_close
from torch import nn

from tally.engine.lora_layers import LoraBatch, LoraContext, MultiLoraLinear, TorchLoraKernels


def naive(
    x: torch.Tensor, base: nn.Linear, adapters: dict[int, tuple[torch.Tensor, torch.Tensor]], slots: list[int]
) -> torch.Tensor:
    y = base(x)
    for i, s in enumerate(slots):
        if s in adapters:
            a, b = adapters[s]  # PEFT layout: a [r, in], b [out, r] (scale already in b)
            y[i] += b @ (a @ x[i])
    return y


def test_bgmv_and_sgmv_match_per_token_reference() -> None:
    torch.manual_seed(0)
    base = nn.Linear(24, 40, bias=True)
    ctx = LoraContext()
    layer = MultiLoraLinear(base, 4, ctx, TorchLoraKernels())
    adapters = {s: (torch.randn(r, 24), torch.randn(40, r)) for s, r in ((1, 4), (2, 16), (3, 8))}
    for s, (a, b) in adapters.items():
        layer.set_slot(s, a, b)
    assert layer.rank == 16
    x = torch.randn(11, 24)
    gather = [2, 0, 1, 3, 3]  # decode part: per-token slots
    segs = [(1, 5, 7), (2, 7, 9), (3, 9, 11)]  # prefill part: one segment per adapter
    slots = [*gather, 1, 1, 2, 2, 3, 3]
    ctx.batch = LoraBatch(5, torch.tensor(gather), segs, frozenset({1, 2, 3}), frozenset(gather))
    with torch.no_grad():
        got = layer(x)
        want = naive(x, base, adapters, slots)
    assert_close(got, want, "mixed gather and segments")


def test_slots_can_be_reused_and_cleared() -> None:
    torch.manual_seed(1)
    base = nn.Linear(8, 8, bias=False)
    ctx = LoraContext()
    layer = MultiLoraLinear(base, 2, ctx, TorchLoraKernels())
    big = (torch.randn(16, 8), torch.randn(8, 16))
    small = (torch.randn(2, 8), torch.randn(8, 2))
    layer.set_slot(1, *big)
    layer.set_slot(1, *small)  # a smaller adapter in the same slot: the padding must be zeroed
    x = torch.randn(3, 8)
    ctx.batch = LoraBatch(3, torch.tensor([1, 1, 0]), [], frozenset({1}), frozenset({1, 0}))
    with torch.no_grad():
        assert_close(layer(x), naive(x, base, {1: small}, [1, 1, 0]), "reused slot")
    layer.clear_slot(1)
    assert layer.rank == 0  # the stacks give their memory back when empty
    with torch.no_grad():
        assert torch.equal(layer(x), base(x))
