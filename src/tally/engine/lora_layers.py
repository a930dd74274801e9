"""Multi-LoRA linear layers: one wrapper per targeted `nn.Linear`, many adapters per batch.

Every wrapped layer owns two slot stacks, `A [slots, in, R]` and `B [slots, R, out]` (scale folded into B), where
slot 0 is all zeros and means "no adapter". `R` is the largest rank among the adapters in this layer's slots; a
lower-rank adapter is zero-padded, which adds exact zeros. The host cache keeps PEFT's own layout; the transpose
happens in the copy into the slot.

A forward pass gets its routing from a `LoraBatch` that the model runner sets on a shared `LoraContext` before the
pass. The packed token batch has two parts:
  * a gather part (decode: one token per sequence), routed token by token (BGMV shape);
  * a segment part (prefill chunks), grouped by adapter into contiguous segments (SGMV shape).
Both go through one `LoraKernels` interface, so CUDA/Triton kernels (Punica's, S-LoRA's) can replace the torch ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_PARENT = {
    "q_proj": "self_attn",
    "k_proj": "self_attn",
    "v_proj": "self_attn",
    "o_proj": "self_attn",
    "gate_proj": "mlp",
    "up_proj": "mlp",
    "down_proj": "mlp",
}


Segment = tuple[int, int, int, int]  # (slot, start, end, rank)


@dataclass
class LoraBatch:
    """How the tokens of one forward pass map to adapter slots.

    Tokens `[0, n_gather)` use per-token routing (`gather_slots`); tokens after that are covered by `segments`
    `(slot, start, end)`, each a run of tokens with one adapter (slot-0 runs are simply left out).
    """

    n_gather: int = 0
    gather_slots: torch.Tensor | None = None  # [n_gather] long, on the model's device
    segments: list[tuple[int, int, int]] = field(default_factory=list)
    slots_in_batch: frozenset[int] = frozenset()  # distinct non-zero slots anywhere in the batch
    gather_slot_set: frozenset[int] = frozenset()  # distinct slots of the gather part

    @property
    def empty(self) -> bool:
        return not self.slots_in_batch


class LoraContext:
    """The routing of the forward pass in progress, shared by every wrapped layer of one model."""

    def __init__(self) -> None:
        self.batch: LoraBatch | None = None
        # bumped whenever a layer's slot stacks change (re-allocated, an adapter placed or cleared): native code
        # holds pointers to them and each slot's rank
        self.stacks_version = 0


class LoraKernels(Protocol):
    """The two kernel shapes; both add their result into `y` in place. `a [S, in, R]`, `b [S, R, out]`."""

    def bgmv(
        self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, rank: int
    ) -> None:
        """Per-token gather: `y[i] += x[i] @ a[slots[i]] @ b[slots[i]]` (ranks above `rank` are all zero)."""
        ...

    def sgmv(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, segments: list[Segment]) -> None:
        """Segments: `y[s:e] += x[s:e] @ a[slot, :, :r] @ b[slot, :r]` for each `(slot, s, e, r)`."""
        ...


class TorchLoraKernels:
    """Pure torch kernels (CPU or CUDA).

    BGMV is two `embedding_bag` sums: the slot stacks are read as tables of rows `(slot, i)`, each token is one bag of
    rows weighted by its activations. That reads each token's adapter rows in place, where `index_select` + `bmm`
    would first copy every token's A and B (measured here 2-5x slower at batch 32). SGMV is one matmul pair per
    segment, at the adapter's own rank.
    """

    def __init__(self) -> None:
        self._memo: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._memo_slots: torch.Tensor | None = None

    def _bags(self, slots: torch.Tensor, rows: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Indices/offsets of bag `n` = rows `slots[n] * rows + [0, width)`; memoised for the step's slots."""
        if self._memo_slots is not slots:
            self._memo, self._memo_slots = {}, slots
        key = (rows, width, 0)
        if key not in self._memo:
            idx = (slots[:, None] * rows + torch.arange(width, device=slots.device)[None, :]).reshape(-1)
            offsets = torch.arange(slots.shape[0], device=slots.device) * width
            self._memo[key] = (idx, offsets)
        return self._memo[key]

    def bgmv(
        self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: torch.Tensor, rank: int
    ) -> None:
        n_slots, in_f, big_r = a.shape
        out_f = b.shape[2]
        idx, off = self._bags(slots, in_f, in_f)
        h = F.embedding_bag(idx, a.view(n_slots * in_f, big_r), off, mode="sum", per_sample_weights=x.reshape(-1))
        idx, off = self._bags(slots, big_r, rank)
        weights = h[:, :rank].reshape(-1)
        y += F.embedding_bag(idx, b.view(n_slots * big_r, out_f), off, mode="sum", per_sample_weights=weights)

    def sgmv(self, y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, segments: list[Segment]) -> None:
        for slot, start, end, r in segments:  # each adapter at its own rank: no padded compute
            y[start:end].addmm_(x[start:end] @ a[slot, :, :r], b[slot, :r])


class MultiLoraLinear(nn.Module):
    """A base `nn.Linear` plus per-token adapter deltas read from the slot stacks."""

    def __init__(
        self, base: nn.Linear, n_slots: int, context: LoraContext, kernels: LoraKernels, name: str = ""
    ) -> None:
        super().__init__()
        self.base = base
        self.name = name
        self.context = context
        self.kernels = kernels
        self.in_features = base.in_features
        self.out_features = base.out_features
        w = base.weight
        # Slot 0 stays zero. Rank starts at 0: the stacks grow to the largest rank actually loaded.
        self.lora_a: torch.Tensor
        self.lora_b: torch.Tensor
        self.register_buffer("lora_a", torch.zeros(n_slots + 1, self.in_features, 0, dtype=w.dtype, device=w.device))
        self.register_buffer("lora_b", torch.zeros(n_slots + 1, 0, self.out_features, dtype=w.dtype, device=w.device))
        self.slot_rank = [0] * (n_slots + 1)  # rank of the adapter in each slot for this layer (0: none)

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[2])

    def _resize(self, rank: int) -> None:
        """Re-allocate the stacks with another padded rank (up when a higher-rank adapter arrives). Compute does not
        pay for the padding: the kernels slice the rank down to the batch's largest."""
        keep = min(rank, self.rank)
        a = self.lora_a.new_zeros(self.lora_a.shape[0], self.lora_a.shape[1], rank)
        b = self.lora_b.new_zeros(self.lora_b.shape[0], rank, self.lora_b.shape[2])
        a[:, :, :keep].copy_(self.lora_a[:, :, :keep])
        b[:, :keep].copy_(self.lora_b[:, :keep])
        self.lora_a, self.lora_b = a, b
        self.context.stacks_version += 1

    def set_slot(self, slot: int, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        """Put one adapter's `a [r, in]` and scaled `b [out, r]` into `slot` (None: this adapter skips the layer)."""
        if a is None or b is None:
            self.clear_slot(slot)
            return
        r = int(a.shape[0])
        if r > self.rank:
            self._resize(r)
        self.lora_a[slot, :, :r].copy_(a.t(), non_blocking=True)
        self.lora_b[slot, :r].copy_(b.t(), non_blocking=True)
        if r < self.rank:  # padding of a previous, larger adapter in this slot
            self.lora_a[slot, :, r:].zero_()
            self.lora_b[slot, r:].zero_()
        self.slot_rank[slot] = r
        self.context.stacks_version += 1

    def clear_slot(self, slot: int) -> None:
        if self.slot_rank[slot]:
            self.lora_a[slot].zero_()
            self.lora_b[slot].zero_()
            self.slot_rank[slot] = 0
            self.context.stacks_version += 1
            if max(self.slot_rank) == 0:
                self._resize(0)  # padding is kept while any slot is filled (no re-allocation churn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_adapters(x, self.base(x))

    def add_adapters(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Add each token's adapter delta into `y`, the base layer's output for `x` (in place); returns `y`."""
        batch = self.context.batch
        if batch is None or batch.empty or self.rank == 0:
            return y
        if not any(self.slot_rank[s] for s in batch.slots_in_batch):
            return y  # no adapter in this batch targets this layer
        flat_x = x.reshape(-1, self.in_features)
        flat_y = y.view(-1, self.out_features)
        if batch.n_gather and batch.gather_slots is not None:
            g = batch.n_gather
            r = max(self.slot_rank[s] for s in batch.gather_slot_set)
            if r:
                self.kernels.bgmv(flat_y[:g], flat_x[:g], self.lora_a, self.lora_b, batch.gather_slots, r)
        segments = [(slot, s, e, self.slot_rank[slot]) for slot, s, e in batch.segments if self.slot_rank[slot]]
        if segments:
            self.kernels.sgmv(flat_y, flat_x, self.lora_a, self.lora_b, segments)
        return y


def projection_module(layer: Any, projection: str) -> Any:
    """One projection (`q_proj`, …, `down_proj`) of a decoder layer: its linear or its multi-LoRA wrapper."""
    return getattr(getattr(layer, _PARENT[projection]), projection)


def wrap_model(
    model: nn.Module, targets: tuple[str, ...], n_slots: int, kernels: LoraKernels | None = None
) -> tuple[LoraContext, dict[tuple[int, str], MultiLoraLinear]]:
    """Wrap each targeted projection of each decoder layer once; returns the shared context and the wrappers."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"unknown LoRA target modules {unknown}; supported: {', '.join(PROJECTIONS)}")
    context = LoraContext()
    kernels = kernels or TorchLoraKernels()
    layers: dict[tuple[int, str], MultiLoraLinear] = {}
    decoder_layers: Any = model.model.layers  # type: ignore[union-attr]
    for index, layer in enumerate(decoder_layers):
        for proj in targets:
            parent = getattr(layer, _PARENT[proj])
            base = getattr(parent, proj)
            if isinstance(base, MultiLoraLinear):
                raise ValueError(f"layer {index} {proj} is already wrapped")
            wrapped = MultiLoraLinear(base, n_slots, context, kernels, name=f"layers.{index}.{proj}")
            setattr(parent, proj, wrapped)
            layers[(index, proj)] = wrapped
    return context, layers
