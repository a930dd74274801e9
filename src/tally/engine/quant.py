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

from tally.engine.native import KernelUnavailable, build_library, cpu_flags

logger = logging.getLogger(__name__)

BLOCK = 32
SOURCE = Path(__file__).parent / "kernels" / "q8_linear.c"
FLAGS = ("-O3", "-mavx2", "-mfma", "-fopenmp", "-shared", "-fPIC")
WEIGHT_FORMATS = ("fp32", "int8")


class Q8Kernel:
    """The compiled `q8_linear` entry point."""

    def __init__(self, library: Path) -> None:
        self.library = library
        self._fn = ctypes.CDLL(str(library)).q8_linear
        self._fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_long] * 3 + [ctypes.c_int]
        self._fn.restype = None
        self._many = ctypes.CDLL(str(library)).q8_linear_many
        self._many.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int, ctypes.c_long, ctypes.c_long, ctypes.c_int]
        self._many.restype = None

    @classmethod
    def load(cls, cache_dir: Path) -> Q8Kernel:
        """Build (once per source and flags) and load the kernel; `KernelUnavailable` says why it cannot."""
        missing = {"avx2", "fma"} - cpu_flags()
        if missing:
            raise KernelUnavailable(f"this CPU lacks {', '.join(sorted(missing))}; serve with engine.weights = fp32")
        library = build_library(SOURCE, FLAGS, cache_dir, "serve with engine.weights = fp32")
        return cls(library)

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
