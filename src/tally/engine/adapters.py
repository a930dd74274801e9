"""Reading PEFT LoRA directories: hashing, validation against the base model, and the weights in slot layout.

A PEFT directory holds `adapter_config.json` and `adapter_model.safetensors`. Only safetensors is read (memory-mapped
by `safe_open`); a directory that has only a pickled `adapter_model.bin` is refused, never unpickled.

An adapter's id is the SHA-256 of its config bytes and its weights bytes. Every cache key (host cache, slots) uses
that id, never the name, so a name re-pointed at new weights can never be served from stale entries.
"""

from __future__ import annotations

import json
import math
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tally.engine.errors import AdapterValidationError
from tally.engine.files import CONFIG_FILE, WEIGHTS_FILE, check_directory, hash_adapter
from tally.engine.lora_layers import PROJECTIONS

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "AdapterWeights",
    "BaseSpec",
    "Fingerprint",
    "check_directory",
    "check_safetensors",
    "hash_adapter",
    "load_adapter",
    "read_config",
]

_KEY = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.[^.]+)?\.weight$")
_ACCEPTED_DTYPES = {torch.float32, torch.float16, torch.bfloat16}


@dataclass(frozen=True)
class BaseSpec:
    """What an adapter is checked against: the base model's layer count and each wrapped projection's shape."""

    num_layers: int
    shapes: dict[str, tuple[int, int]]  # projection -> (in_features, out_features)
    targets: tuple[str, ...]  # the projections the engine wrapped
    max_rank: int
    dtype: torch.dtype

    @classmethod
    def from_model(cls, model: Any, targets: tuple[str, ...], max_rank: int) -> BaseSpec:
        layer = model.model.layers[0]
        shapes = {}
        for proj in PROJECTIONS:
            parent = layer.self_attn if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            mod = getattr(parent, proj)
            mod = getattr(mod, "base", mod)  # already wrapped
            shapes[proj] = (int(mod.in_features), int(mod.out_features))
        dtype = next(model.parameters()).dtype
        return cls(len(model.model.layers), shapes, tuple(targets), max_rank, dtype)


@dataclass(frozen=True)
class Fingerprint:
    """Cheap stat of the adapter files: when it changes, the directory must be hashed again."""

    config: tuple[int, int, int]
    weights: tuple[int, int, int]

    @classmethod
    def of(cls, path: Path) -> Fingerprint:
        def one(p: Path) -> tuple[int, int, int]:
            st = p.stat()
            return (st.st_ino, st.st_size, st.st_mtime_ns)

        return cls(one(path / CONFIG_FILE), one(path / WEIGHTS_FILE))


@dataclass
class AdapterWeights:
    """One validated adapter in slot layout: `(layer, projection) -> (a [in, r], b_scaled [r, out])`."""

    adapter_id: str
    name: str
    path: Path
    rank: int
    alpha: float
    targets: tuple[str, ...]
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]
    nbytes: int
    fingerprint: Fingerprint


def read_config(name: str, path: Path) -> dict[str, Any]:
    """The adapter config, with every setting the engine cannot serve exactly refused by name."""
    try:
        cfg = json.loads((path / CONFIG_FILE).read_text())
    except OSError as exc:  # its strerror only: the text of an OSError names the server's path
        raise AdapterValidationError(f"adapter {name!r}: cannot read {CONFIG_FILE}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise AdapterValidationError(f"adapter {name!r}: {CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict):
        raise AdapterValidationError(f"adapter {name!r}: {CONFIG_FILE} is not a JSON object")
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterValidationError(f"adapter {name!r}: peft_type {cfg.get('peft_type')!r} is not LORA")
    unsupported: dict[str, Any] = {
        "use_dora": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "alpha_pattern": {},
        "layer_replication": None,
    }
    for key, ok in unsupported.items():
        value = cfg.get(key, ok)
        if value not in (ok, None, {}, [], False):
            raise AdapterValidationError(f"adapter {name!r}: {key}={value!r} is not supported by the engine")
    if cfg.get("bias", "none") != "none":
        raise AdapterValidationError(f"adapter {name!r}: bias={cfg.get('bias')!r} is not supported (only 'none')")
    return cfg


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _header_length(name: str, size: int, first8: bytes) -> int:
    if size < 8:
        raise AdapterValidationError(f"adapter {name!r}: {WEIGHTS_FILE} is truncated")
    header_len = int.from_bytes(first8, "little")
    if header_len > min(size - 8, 100_000_000):
        raise AdapterValidationError(f"adapter {name!r}: {WEIGHTS_FILE} has a bad header length")
    return header_len


def _tensor_entries(name: str, raw_header: bytes, data_len: int) -> list[tuple[str, torch.dtype, list[int], int, int]]:
    """(key, dtype, shape, begin, end) per tensor, every field and offset checked against the data region."""
    try:
        header = json.loads(raw_header)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AdapterValidationError(f"adapter {name!r}: {WEIGHTS_FILE} header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise AdapterValidationError(f"adapter {name!r}: {WEIGHTS_FILE} header is not a JSON object")
    header.pop("__metadata__", None)
    entries = []
    for key, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
            begin, end = int(begin), int(end)
        except (KeyError, TypeError, ValueError):
            raise AdapterValidationError(f"adapter {name!r}: tensor {key!r} has a malformed header entry") from None
        dtype = _DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dtype is None:
            raise AdapterValidationError(f"adapter {name!r}: tensor {key!r} has dtype {dtype_name}; expected float")
        if any(d < 0 for d in shape):
            raise AdapterValidationError(f"adapter {name!r}: tensor {key!r} has a negative dimension {shape}")
        itemsize = torch.empty((), dtype=dtype).element_size()
        if not (0 <= begin <= end <= data_len) or end - begin != math.prod(shape) * itemsize:
            raise AdapterValidationError(f"adapter {name!r}: tensor {key!r} has offsets outside the file")
        entries.append((key, dtype, shape, begin, end))
    return entries


def check_safetensors(name: str, file: Path) -> None:
    """The header alone (a few KB), checked as `read_safetensors` would: a garbage, truncated or malformed file is
    refused when a request names the adapter, before any weights are read."""
    size = file.stat().st_size
    with file.open("rb") as f:
        header_len = _header_length(name, size, f.read(8))
        _tensor_entries(name, f.read(header_len), size - 8 - header_len)


def read_safetensors(name: str, file: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file from one memory map, with a single copy of the data region.

    The header is parsed per the safetensors spec (8-byte little-endian length, JSON with dtype, shape and
    data_offsets) and every offset is bounds-checked; tensors are views into one owned buffer. This is several
    times faster than one `get_tensor` call per tensor for adapters with hundreds of small tensors, and it never
    executes anything from the file.
    """
    size = file.stat().st_size
    with file.open("rb") as f:
        header_len = _header_length(name, size, f.read(8))
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            entries = _tensor_entries(name, mm[8 : 8 + header_len], size - 8 - header_len)
            start = 8 + header_len
            data = torch.empty(size - start, dtype=torch.uint8)
            data.numpy()[:] = memoryview(mm)[start:]  # the one copy, straight from the page cache
    out: dict[str, torch.Tensor] = {}
    for key, dtype, shape, begin, end in entries:
        itemsize = torch.empty((), dtype=dtype).element_size()
        raw = data[begin:end]
        out[key] = (raw.view(dtype) if begin % itemsize == 0 else raw.clone().view(dtype)).view(shape)
    return out


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """One fused pass: a NaN or Inf anywhere makes that tensor's norm non-finite."""
    if not tensors:
        return True
    norms = torch._foreach_norm([t.float() if t.dtype != torch.float32 else t for t in tensors])
    return bool(torch.isfinite(torch.stack(norms)).all())


def load_adapter(
    name: str,
    path: Path,
    spec: BaseSpec,
    device: torch.device | str = "cpu",
    known: tuple[str, Fingerprint] | None = None,
) -> AdapterWeights:
    """Read, validate and convert one adapter; every error names the adapter and, where it applies, the tensor.

    `known` is an `(id, fingerprint)` computed earlier for this directory: when the files' fingerprint still
    matches, the id is reused instead of hashing the weights again (a cold reload then costs only the read).
    """
    path = Path(path)
    check_directory(name, path)
    fingerprint = Fingerprint.of(path)
    cfg = read_config(name, path)
    adapter_id = known[0] if known is not None and known[1] == fingerprint else hash_adapter(path)
    alpha = float(cfg.get("lora_alpha", cfg.get("r", 8)))
    use_rslora = bool(cfg.get("use_rslora", False))
    raw: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    tensors_in_file = read_safetensors(name, path / WEIGHTS_FILE)
    for key, t in tensors_in_file.items():
        m = _KEY.search(key)
        if m is None:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {key!r} is not a LoRA A/B weight of a decoder-layer projection"
            )
        layer, proj, which = int(m.group(1)), m.group(2), m.group(3)
        if proj not in spec.shapes:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {key!r} targets {proj!r}, which the base model does not have"
            )
        if proj not in spec.targets:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {key!r} targets {proj!r}, which this engine does not serve "
                f"(engine targets: {', '.join(spec.targets)})"
            )
        if layer >= spec.num_layers:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {key!r} is for layer {layer}; the base model has {spec.num_layers}"
            )
        if t.dim() != 2:
            raise AdapterValidationError(f"adapter {name!r}: tensor {key!r} has shape {tuple(t.shape)}, not 2-D")
        raw.setdefault((layer, proj), {})[which] = t
    if not raw:
        raise AdapterValidationError(f"adapter {name!r}: {WEIGHTS_FILE} has no LoRA tensors")
    if not _all_finite(list(tensors_in_file.values())):
        bad = next(k for k, t in tensors_in_file.items() if not bool(torch.isfinite(t).all()))
        raise AdapterValidationError(f"adapter {name!r}: tensor {bad!r} contains NaN or Inf")
    tensors: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}
    nbytes = 0
    max_rank = 0
    on_cpu = torch.device(device).type == "cpu"
    for (layer, proj), pair in sorted(raw.items()):
        where = f"layers.{layer}.{proj}"
        if "A" not in pair or "B" not in pair:
            missing = "lora_A" if "A" not in pair else "lora_B"
            raise AdapterValidationError(f"adapter {name!r}: {where} has no {missing} tensor")
        a, b = pair["A"], pair["B"]
        in_f, out_f = spec.shapes[proj]
        r = int(a.shape[0])
        if a.shape[1] != in_f:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {where}.lora_A has shape {tuple(a.shape)}; the base expects [r, {in_f}]"
            )
        if tuple(b.shape) != (out_f, r):
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {where}.lora_B has shape {tuple(b.shape)}; expected [{out_f}, {r}]"
            )
        if r > spec.max_rank:
            raise AdapterValidationError(
                f"adapter {name!r}: tensor {where}.lora_A has rank {r}, above the engine's max rank {spec.max_rank}"
            )
        scale = alpha / math.sqrt(r) if use_rslora else alpha / r
        # PEFT layout kept (A [r, in], B [out, r]); the scale is folded into B, in place in our own buffer
        a_t = a if a.dtype == spec.dtype else a.to(spec.dtype)
        b_t = b.mul_(scale) if b.dtype == spec.dtype else b.to(spec.dtype).mul_(scale)
        if not on_cpu:
            a_t, b_t = a_t.to(device), b_t.to(device)
        tensors[(layer, proj)] = (a_t, b_t)
        nbytes += a_t.numel() * a_t.element_size() + b_t.numel() * b_t.element_size()
        max_rank = max(max_rank, r)
    targets = tuple(p for p in PROJECTIONS if any(k[1] == p for k in tensors))
    return AdapterWeights(adapter_id, name, path, max_rank, alpha, targets, tensors, nbytes, fingerprint)
