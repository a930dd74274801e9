"""Int8 base weights for CPU decode: a smaller model read faster, with the same answers whatever the batch.

Decode is bound by memory bandwidth (every weight is read once per step for a few tokens), so reading 1.125 bytes a
weight instead of 4 is the way to a faster step on a CPU. Torch's own int8/bf16 CPU kernels are slower than fp32 for
these shapes on AVX2 machines, so the kernel is ours: `kernels/q8_linear.c`, compiled once with the system's C
compiler into the kernel cache and called through ctypes (which releases the GIL).

Numerics: weights are quantised symmetrically in blocks of 32 along the input (one fp32 scale per block, as GGUF's
Q8_0) and the fp32 copy the model keeps is replaced by the dequantised values. So a step with few tokens (the int8
kernel) and a large step (fp32 GEMM over the dequantised copy) compute the same products, and an answer does not
depend on what it was batched with. The quality cost of int8 is measured against the original fp32 weights
(`benchmarks/decode.py`: greedy agreement and perplexity).
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tally.engine.lora_layers import PROJECTIONS, MultiLoraLinear, projection_module
from tally.engine.native import (
    KERNELS,
    DecodeOps,
    KernelUnavailable,
    build_library,
    check_within_cache,
    cpu_flags,
    open_library,
)

logger = logging.getLogger(__name__)

BLOCK = 32
SOURCE = KERNELS / "q8_linear.c"
DECODE_SOURCE = KERNELS / "q8_decode.c"  # every layer of a decode step in one call
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
WEIGHT_FORMATS = ("fp32", "int8")
INT8_OTHERWISE = "serve with engine.weights = fp32"  # what a refusal of the int8 kernel tells the user to do


class Q8Kernel:
    """The compiled `q8_linear` entry point."""

    def __init__(self, library: Path) -> None:
        self.library = library
        lib = open_library(library, INT8_OTHERWISE)
        self._fn = lib.q8_linear
        self._fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        self._fn.restype = None
        self._many = lib.q8_linear_many
        self._many.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        self._many.restype = None

    @classmethod
    def load(cls, cache_dir: Path) -> Q8Kernel:
        """Build (once per source and flags) and load the kernel; `KernelUnavailable` says why it cannot."""
        missing = {"avx2", "fma"} - cpu_flags()
        if missing:
            raise KernelUnavailable(f"this CPU lacks {', '.join(sorted(missing))}; {INT8_OTHERWISE}")
        return cls(build_library(SOURCE, FLAGS, cache_dir, INT8_OTHERWISE))

    def __call__(self, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        n, width = x.shape
        y = torch.empty(n, q.shape[0], dtype=torch.float32)
        self._fn(
            x.data_ptr(), q.data_ptr(), scale.data_ptr(), y.data_ptr(), n, width, q.shape[0], torch.get_num_threads()
        )
        return y

    def many(self, x: torch.Tensor, weights: list[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
        """`x` through several int8 weights `(q, scale)` of the same input width in one call (one parallel loop
        over all their rows): a layer's q, k and v projections, or gate and up."""
        n, width = x.shape
        ys = [torch.empty(n, q.shape[0], dtype=torch.float32) for q, _ in weights]
        count = len(weights)
        pointers = ctypes.c_void_p * count
        self._many(
            x.data_ptr(),
            pointers(*(q.data_ptr() for q, _ in weights)),
            pointers(*(s.data_ptr() for _, s in weights)),
            pointers(*(y.data_ptr() for y in ys)),
            (ctypes.c_long * count)(*(q.shape[0] for q, _ in weights)),
            count, n, width, torch.get_num_threads(),
        )  # fmt: skip
        return ys


def quantize(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 in blocks of `BLOCK` along the input: `(q [out, in] int8, scale [out, in / BLOCK] fp32)`."""
    out_f, in_f = weight.shape
    blocks = weight.detach().float().reshape(out_f, in_f // BLOCK, BLOCK)
    scale = blocks.abs().amax(-1) / 127.0
    q = torch.round(blocks / torch.where(scale > 0, scale, 1.0)[..., None]).clamp_(-127, 127).to(torch.int8)
    return q.reshape(out_f, in_f).contiguous(), scale.contiguous()


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out_f, in_f = q.shape
    return (q.float().reshape(out_f, in_f // BLOCK, BLOCK) * scale[..., None]).reshape(out_f, in_f)


class Q8Linear(nn.Module):
    """An `nn.Linear` with int8 weights: the int8 kernel for steps of at most `max_tokens` tokens, fp32 GEMM over
    the dequantised weights above that (the same products either way)."""

    def __init__(self, base: nn.Linear, kernel: Q8Kernel, max_tokens: int) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kernel, self.max_tokens = kernel, max_tokens
        self.q: torch.Tensor
        self.scale: torch.Tensor
        q, scale = quantize(base.weight)
        self.register_buffer("q", q)
        self.register_buffer("scale", scale)
        # its own tensor: a tied weight (the output projection shares the embedding's) must not change the embedding
        self.weight = nn.Parameter(dequantize(q, scale), requires_grad=False)
        self.bias = base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if flat.shape[0] > self.max_tokens or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        y = self.kernel(flat.contiguous(), self.q, self.scale)
        if self.bias is not None:
            y += self.bias
        return y.view(*x.shape[:-1], self.out_features)


def quantize_model(model: Any, kernel: Q8Kernel, max_tokens: int) -> int:
    """Replace every decoder projection and the output head with `Q8Linear`; returns how many were replaced (a
    layer whose input width is not a multiple of the block stays fp32)."""
    replaced = 0
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear) and child.in_features % BLOCK == 0:
                    setattr(parent, name, Q8Linear(child, kernel, max_tokens))
                    replaced += 1
    head = model.lm_head
    if isinstance(head, nn.Linear) and head.in_features % BLOCK == 0:
        model.lm_head = Q8Linear(head, kernel, max_tokens)
        replaced += 1
    return replaced


def _pointers(tensors: list[torch.Tensor] | list[torch.Tensor | None]) -> Any:
    """A C array of the tensors' data pointers (NULL for None)."""
    return (ctypes.c_void_p * len(tensors))(*(t.data_ptr() if t is not None else None for t in tensors))


class Q8Decoder:
    """A decode step through every layer in one native call (kernels/q8_decode.c), for steps of decode tokens only,
    each with its adapter or none: the layer's pieces (the same ones the runner calls one by one, each adapter's
    delta added after its projection) run back to back without returning to Python. Holds pointers to the model's
    int8 weights, norms and the KV cache, which the engine allocates once and never moves; the adapters' slot stacks
    are re-allocated when a higher rank arrives, so their pointers are re-read whenever the stacks change."""

    def __init__(self, library: Path, model: Any, cache: Any, max_tokens: int) -> None:
        self.library, self.max_tokens = library, max_tokens
        self._fn = open_library(library, DecodeOps.OTHERWISE).q8_decode_layers
        self._fn.argtypes = [ctypes.c_void_p, *[ctypes.c_long] * 8, ctypes.c_float, ctypes.c_float]
        self._fn.argtypes += [ctypes.c_void_p] * 9 + [ctypes.c_long] + [ctypes.c_void_p] * 5 + [ctypes.c_long]
        self._fn.argtypes += [ctypes.c_long, ctypes.c_void_p, ctypes.c_int]
        self._fn.restype = None
        cfg = model.config
        layers = model.model.layers
        norms = [w for layer in layers for w in (layer.input_layernorm.weight, layer.post_attention_layernorm.weight)]
        bases = [_base(layer, p) for layer in layers for p in PROJECTIONS]
        wrappers = [_wrapper(layer, p) for layer in layers for p in PROJECTIONS]
        self._wrappers = wrappers
        self._context = next((w.context for w in wrappers if w is not None), None)
        # adapters go through the one call where every slot stack is fp32 (the runner's path adds them otherwise)
        self.adapters = self._context is not None and all(
            w is None or w.lora_a.dtype == torch.float32 for w in wrappers
        )
        self._stacks: tuple[int, tuple[Any, ...]] | None = None  # (stacks version, the C arrays for them)
        self.hidden, self.inter = int(cfg.hidden_size), int(cfg.intermediate_size)
        self.kv_heads, self.heads = int(cfg.num_key_value_heads), int(cfg.num_attention_heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or self.hidden // self.heads)
        self.eps = float(layers[0].input_layernorm.variance_epsilon)
        self.capacity = int(cache.capacity)
        caches = [t for pair in zip(cache.k, cache.v, strict=True) for t in pair]
        self._keep = (norms, bases, caches)  # the pointers below stay valid while these live
        self._norms, self._caches = _pointers(norms), _pointers(caches)
        self._weights, self._scales = _pointers([b.q for b in bases]), _pointers([b.scale for b in bases])
        self.layers = len(layers)

    @classmethod
    def for_model(cls, cache_dir: Path, model: Any, cache: Any, max_tokens: int) -> Q8Decoder | None:
        """The decoder where the model allows it (every projection int8 without bias, SiLU MLP, one norm epsilon,
        an fp32 cache); None otherwise. `KernelUnavailable` when it cannot be built."""
        cfg = model.config
        layers = model.model.layers
        bases = [_base(layer, p) for layer in layers for p in PROJECTIONS]
        norms = [n for layer in layers for n in (layer.input_layernorm, layer.post_attention_layernorm)]
        fits = (
            getattr(cfg, "hidden_act", "silu") == "silu"
            and all(isinstance(b, Q8Linear) and b.bias is None for b in bases)
            and len({float(n.variance_epsilon) for n in norms}) == 1
            and all(t.dtype == torch.float32 and t.is_contiguous() for t in (*cache.k, *cache.v))
        )
        if not fits:
            return None
        includes = (SOURCE, DecodeOps.SOURCE)
        library = build_library(DECODE_SOURCE, FLAGS, cache_dir, DecodeOps.OTHERWISE, includes)
        return cls(library, model, cache, max_tokens)

    def run(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        longest: int,
        threads: int,
        slots: torch.Tensor | None = None,
        capture: tuple[int, torch.Tensor] | None = None,
    ) -> None:
        """Every layer over the decode tokens' hidden states `x [n, hidden]` (contiguous fp32, updated in place),
        their keys and values written into the cache (arguments as `DecodeOps.decode_attention`); `slots [n]`
        (long) each token's adapter slot, None where no token has one; `capture` (layer, out [n, hidden]) receives
        the hidden states entering that layer."""
        n = x.shape[0]
        if capture is not None and not (
            capture[1].shape == x.shape and capture[1].is_contiguous() and capture[1].dtype == torch.float32
        ):
            raise ValueError(f"capture needs a contiguous fp32 {tuple(x.shape)} tensor, got {tuple(capture[1].shape)}")
        check_within_cache(longest, self.capacity)
        rep = self.heads // self.kv_heads
        width = n * (2 * self.hidden + 2 * self.heads * self.head_dim + 2 * self.kv_heads * self.head_dim)
        work = torch.empty(width + n * 2 * self.inter + n * self.kv_heads * longest, dtype=torch.float32)
        adapters: tuple[Any, ...] = (None, None, None, None, 0)
        if slots is not None:
            adapters = self._stack_pointers()
        self._fn(
            x.data_ptr(), n, self.layers, self.hidden, self.inter, self.kv_heads, rep, self.head_dim, self.capacity,
            self.eps, self.head_dim**-0.5, self._norms, self._weights, self._scales, self._caches, cos.data_ptr(),
            sin.data_ptr(), rows.data_ptr(), positions.data_ptr(), work.data_ptr(), longest,
            slots.data_ptr() if slots is not None else None, *adapters, capture[0] if capture is not None else -1,
            capture[1].data_ptr() if capture is not None else None, threads,
        )  # fmt: skip

    def _stack_pointers(self) -> tuple[Any, ...]:
        """C arrays of every projection's adapter slot stacks (A, B; NULL where none), their padded ranks and each
        slot's own rank, and the slot count; rebuilt only when an adapter was placed, cleared or re-allocated since
        the last step."""
        if not self.adapters or self._context is None:
            raise ValueError("this model's adapter stacks are not fp32: adapters cannot go through the one call")
        version = self._context.stacks_version
        if self._stacks is None or self._stacks[0] != version:
            stacks = [w if w is not None and w.rank else None for w in self._wrappers]
            for w in stacks:
                if w is not None and not (w.lora_a.is_contiguous() and w.lora_b.is_contiguous()):
                    raise ValueError(f"{w.name}: adapter slot stacks must be contiguous")
            n_slots = next(len(w.slot_rank) for w in self._wrappers if w is not None)
            slot_ranks = [r for w in stacks for r in (w.slot_rank if w is not None else [0] * n_slots)]
            self._stacks = (
                version,
                (
                    _pointers([w.lora_a if w is not None else None for w in stacks]),
                    _pointers([w.lora_b if w is not None else None for w in stacks]),
                    (ctypes.c_long * len(stacks))(*(w.rank if w is not None else 0 for w in stacks)),
                    (ctypes.c_long * len(slot_ranks))(*slot_ranks),
                    n_slots,
                ),
            )
        return self._stacks[1]


def _wrapper(layer: Any, projection: str) -> MultiLoraLinear | None:
    """The multi-LoRA wrapper of one projection of a decoder layer, None where it has none."""
    module = projection_module(layer, projection)
    return module if isinstance(module, MultiLoraLinear) else None


def _base(layer: Any, projection: str) -> Any:
    """The base linear of one projection of a decoder layer, under its multi-LoRA wrapper if it has one."""
    module = projection_module(layer, projection)
    return module.base if isinstance(module, MultiLoraLinear) else module
