"""Compiled CPU helpers: built once with the system's C compiler into the kernel cache, called through ctypes.

ctypes releases the GIL for the call, so the engine thread's native work runs beside the server's Python. A library
is built aside and renamed into place (never half a library), under a name that hashes its source and flags.

`DecodeOps` (kernels/decode_ops.c) does a decode step's small per-layer work in one call each: RMSNorm, the gated
MLP's SiLU and product, and rotary embedding + key/value cache write + attention for the step's decode tokens. Torch
runs these as dozens of small ops per layer whose dispatch costs more than their arithmetic at one token
(docs/engine.md, "Decode step").
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

KERNELS = Path(__file__).parent / "kernels"


def default_kernel_dir() -> Path:
    """Where kernels are built when no folder is given: beside the default model cache."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tally" / "kernels"


class KernelUnavailable(RuntimeError):
    """A compiled kernel cannot run here (CPU features, no C compiler, a failed build); the message says why."""


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def build_library(
    source: Path, flags: tuple[str, ...], cache_dir: Path, otherwise: str, includes: tuple[Path, ...] = ()
) -> Path:
    """The shared library of `source` (which #includes `includes`) built with `flags` in `cache_dir` (on first use);
    `otherwise` ends the error message with what the user can do instead."""
    text = b"".join(p.read_bytes() for p in (source, *includes))
    digest = hashlib.sha256(text + " ".join(flags).encode()).hexdigest()[:16]
    library = cache_dir / f"{source.stem}-{digest}.so"
    if library.exists():
        return library
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise KernelUnavailable(
            f"{source.name} needs a C compiler to build (install gcc, e.g. `apt-get install gcc`), or {otherwise}"
        )
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, suffix=".so")
        os.close(fd)
    except OSError as exc:
        message = f"cannot write the kernel cache {cache_dir}: {exc}; fix its permissions or {otherwise}"
        raise KernelUnavailable(message) from exc
    try:
        done = subprocess.run(
            [compiler, *flags, "-o", tmp, str(source)], capture_output=True, text=True, timeout=300, check=False
        )
        failure = done.stderr.strip()[-500:] if done.returncode != 0 else None
    except (OSError, subprocess.SubprocessError) as exc:
        failure = str(exc)
    if failure is not None:
        Path(tmp).unlink(missing_ok=True)
        raise KernelUnavailable(f"building {source.name} with {compiler} failed: {failure}; install gcc or {otherwise}")
    os.replace(tmp, library)
    logger.info("built %s", library)
    return library


def _ptr(t: torch.Tensor) -> int:
    return int(t.data_ptr())


def check_within_cache(longest: int, capacity: int) -> None:
    """Native code writes keys and values at the decode positions: refuse one past the cache (the scheduler keeps
    within it; this keeps a mistake there from writing outside the cache's memory)."""
    if longest > capacity:
        raise ValueError(f"decode position {longest - 1} is outside the KV cache's {capacity} positions")


def open_library(library: Path, otherwise: str) -> ctypes.CDLL:
    """The built `library`, loaded; `KernelUnavailable` when it does not load here (another machine's build in a
    shared kernel cache, a missing runtime library), its message ending with `otherwise`."""
    try:
        return ctypes.CDLL(str(library))
    except OSError as exc:
        raise KernelUnavailable(f"loading {library} failed: {exc}; {otherwise}") from exc


class DecodeOps:
    """The entry points of kernels/decode_ops.c over contiguous fp32 CPU tensors."""

    SOURCE = KERNELS / "decode_ops.c"
    OTHERWISE = "set engine.native_decode = false"

    def __init__(self, library: Path) -> None:
        self.library = library
        lib = open_library(library, self.OTHERWISE)
        self._rms_norm = lib.rms_norm
        self._rms_norm.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_long] * 2 + [ctypes.c_float]
        self._rms_norm.restype = None
        self._silu_mul = lib.silu_mul
        self._silu_mul.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_long]
        self._silu_mul.restype = None
        self._attention = lib.decode_attention
        pointers: list[Any] = [ctypes.c_void_p] * 10
        sizes: list[Any] = [ctypes.c_long] * 5
        tail: list[Any] = [ctypes.c_float, ctypes.c_void_p, ctypes.c_long, ctypes.c_int]  # scale, scratch, threads
        self._attention.argtypes = pointers + sizes + tail
        self._attention.restype = None

    @classmethod
    def load(cls, cache_dir: Path) -> DecodeOps:
        # vector extensions only where the CPU has them: the library is cached per flags, so one built on a
        # machine with AVX2 is never loaded on one without
        extra = ("-mavx2", "-mfma") if {"avx2", "fma"} <= cpu_flags() else ()
        flags = ("-O3", *extra, "-fopenmp", "-shared", "-fPIC")
        return cls(build_library(cls.SOURCE, flags, cache_dir, cls.OTHERWISE))

    def rms_norm(self, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        """RMSNorm over the last dimension of a contiguous `x` (fp32, CPU)."""
        y = torch.empty_like(x)
        d = x.shape[-1]
        self._rms_norm(_ptr(x), _ptr(weight), _ptr(y), x.numel() // d, d, eps)
        return y

    def silu_mul(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        """`silu(gate) * up`, written into `gate` (contiguous fp32 CPU tensors of one shape), which it returns."""
        self._silu_mul(_ptr(gate), _ptr(up), gate.numel())
        return gate

    def decode_attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache_k: torch.Tensor,
        cache_v: torch.Tensor,
        rows: torch.Tensor,
        positions: torch.Tensor,
        longest: int,
        scale: float,
        threads: int,
    ) -> torch.Tensor:
        """Rotate `q [n, heads, hd]` and `k [n, kv_heads, hd]` in place, write k and v at `(rows, positions)` of the
        caches `[rows, kv_heads, capacity, hd]`, and return the attention output `[n, heads, hd]` of each token over
        its row's positions up to its own (`longest`: the largest position + 1). Every tensor contiguous; `rows` and
        `positions` int64."""
        n, heads, hd = q.shape
        kv_heads, capacity = cache_k.shape[1], cache_k.shape[2]
        check_within_cache(longest, capacity)
        out = torch.empty_like(q)
        scratch = torch.empty(n * kv_heads * longest, dtype=torch.float32)
        self._attention(
            _ptr(q), _ptr(k), _ptr(v), _ptr(cos), _ptr(sin), _ptr(cache_k), _ptr(cache_v), _ptr(rows),
            _ptr(positions), _ptr(out), n, kv_heads, heads // kv_heads, hd, capacity, scale, _ptr(scratch), longest,
            threads,
        )  # fmt: skip
        return out
