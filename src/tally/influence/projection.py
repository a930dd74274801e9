"""A seeded per-layer random projection of LoRA gradients: a count sketch (sparse Johnson-Lindenstrauss).

Each transformer layer gets its own slice of the output (the total split as evenly as possible), so per-layer
normalisation stays possible after projection. A count sketch maps every gradient coordinate to one bucket with a
random sign: storing it costs one index per parameter (not a dense matrix of parameters x dims, which for
SmolLM2-135M at r16 would be ~90 MB per layer), projecting is one `index_add_`, and the same seed and module
names give the same projection anywhere, so a query gradient at serving time lands in the same space.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import torch
from torch import nn

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def lora_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """The trainable LoRA A/B linears of a PEFT model, by module name, in a stable (sorted) order."""
    found = {
        name: mod
        for name, mod in model.named_modules()
        if isinstance(mod, nn.Linear) and (".lora_A." in name or ".lora_B." in name) and mod.weight.requires_grad
    }
    return dict(sorted(found.items()))


def layer_number(name: str) -> int | None:
    """The transformer layer a module or parameter name lies in (`...layers.12...` -> 12), None outside them."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def layer_of(module_name: str) -> str:
    number = layer_number(module_name)
    return f"layer.{number:03d}" if number is not None else module_name


@dataclass(frozen=True)
class LayerSlice:
    layer: str
    modules: list[str]
    params: int
    dims: int
    offset: int


class Projector:
    """Projects per-example gradients of each LoRA module into that module's layer slice of `dims` outputs."""

    def __init__(self, module_shapes: dict[str, tuple[int, int]], dims: int = 4096, seed: int = 0) -> None:
        self.seed, self.dims = seed, dims
        groups: dict[str, list[str]] = {}
        for name in sorted(module_shapes):
            groups.setdefault(layer_of(name), []).append(name)
        if dims < len(groups):
            raise ValueError(f"{dims} projected dims cannot be split over {len(groups)} layers")
        base, extra = divmod(dims, len(groups))
        self.layers: list[LayerSlice] = []
        offset = 0
        for i, (layer, names) in enumerate(sorted(groups.items())):
            d = base + (1 if i < extra else 0)
            params = sum(module_shapes[n][0] * module_shapes[n][1] for n in names)
            self.layers.append(LayerSlice(layer, names, params, d, offset))
            offset += d
        self._where = {n: s for s in self.layers for n in s.modules}
        self._sketch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.shapes = module_shapes

    @classmethod
    def for_model(cls, model: nn.Module, dims: int = 4096, seed: int = 0) -> Projector:
        return cls({n: tuple(m.weight.shape) for n, m in lora_modules(model).items()}, dims, seed)  # type: ignore[misc]

    @classmethod
    def from_description(cls, desc: dict[str, object]) -> Projector:
        """The projector an index was built with (its `projection` entry), without loading the model."""
        shapes = {n: (int(s[0]), int(s[1])) for n, s in desc["shapes"].items()}  # type: ignore[attr-defined]
        return cls(shapes, int(desc["dims"]), int(desc["seed"]))  # type: ignore[call-overload]

    def sketch(self, module: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(bucket index within the layer slice, sign) per weight coordinate of `module`, from the seed and name."""
        if module not in self._sketch:
            out, inp = self.shapes[module]
            digest = hashlib.sha256(f"{self.seed}:{module}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
            layer = self._where[module]
            buckets = torch.randint(0, layer.dims, (out * inp,), generator=gen) + layer.offset
            signs = torch.randint(0, 2, (out * inp,), generator=gen, dtype=torch.int8).float() * 2 - 1
            self._sketch[module] = (buckets, signs)
        return self._sketch[module]

    def add(self, module: str, grads: torch.Tensor, into: torch.Tensor) -> None:
        """Add the projection of per-example gradients `grads` (batch, out, in) into `into` (batch, dims)."""
        buckets, signs = self.sketch(module)
        into.index_add_(1, buckets, grads.reshape(grads.shape[0], -1).float() * signs)

    def describe(self) -> dict[str, object]:
        return {
            "kind": "count_sketch",
            "seed": self.seed,
            "dims": self.dims,
            "layers": [vars(s) | {"modules": list(s.modules)} for s in self.layers],
            "shapes": {n: list(s) for n, s in self.shapes.items()},
        }
