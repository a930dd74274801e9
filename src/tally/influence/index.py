"""The training-data index stored beside an adapter: projected gradients (safetensors) + their meaning (JSON).

`influence/index.safetensors` holds one fp16 matrix (examples x dims) per checkpoint: `final` (the trained
adapter, no dropout) and, when captured, `epoch_1` ... (gradients taken during each epoch's training steps,
TracIn-style). `influence/index.json` holds the projection (kind, seed, per-layer slices), the checkpoints with
their learning rates, and per row: row hash, datanet, snapshot, contribution, contributor, target tokens.
Nothing is pickled.

Format versions: `tally.influence/2` adds an optional per-row `trained` flag: `false` marks a candidate row the
adapter was not trained on (its gradient and representation at the trained adapter are in `final` and the
representation tensor so that methods can be compared on it; its per-epoch rows are zero, as it was never in a
batch). Such rows are scored but never credited. Version 1 indexes (every row trained) load unchanged.

A per-epoch checkpoint may name an `adapter`: `checkpoints/epoch_<n>`, a PEFT adapter directory inside
`influence/` with the weights that epoch started from (epoch 1: the initial adapter), so a query's gradient can be
taken where each checkpoint's rows were trained from (TracIn). Older indexes have none; only that exact relative
form is followed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

INDEX_TENSORS = "index.safetensors"
INDEX_JSON = "index.json"
FORMAT = "tally.influence/2"
READABLE = ("tally.influence/1", FORMAT)
CHECKPOINT_ADAPTER = re.compile(r"checkpoints/epoch_[1-9][0-9]{0,5}")


@dataclass
class InfluenceIndex:
    tensors: dict[str, torch.Tensor]  # checkpoint name -> (examples, dims) fp16
    meta: dict[str, Any]
    directory: Path | None = None  # where it was loaded from (checkpoint adapters are found under it)

    def checkpoint_adapters(self) -> dict[str, Path]:
        """Checkpoint name -> its adapter directory, for the per-epoch checkpoints that kept their weights."""
        if self.directory is None:
            return {}
        found = {}
        for c in self.meta.get("checkpoints", []):
            rel = c.get("adapter")
            if isinstance(rel, str) and CHECKPOINT_ADAPTER.fullmatch(rel) and c["name"] in self.tensors:
                path = self.directory / rel
                inside = path.resolve().is_relative_to(self.directory.resolve())  # no link out of the index
                if (
                    inside
                    and (path / "adapter_config.json").is_file()
                    and (path / "adapter_model.safetensors").is_file()
                ):
                    found[str(c["name"])] = path
        return found

    @property
    def examples(self) -> list[dict[str, Any]]:
        return list(self.meta["examples"])

    def untrained(self) -> list[int]:
        """Positions of candidate rows the adapter was not trained on (scored for comparison, never credited)."""
        return [i for i, e in enumerate(self.meta["examples"]) if e.get("trained") is False]

    def layer_slices(self) -> list[tuple[int, int]]:
        return [(s["offset"], s["dims"]) for s in self.meta["projection"]["layers"]]


def save_index(directory: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(directory / INDEX_TENSORS))
    (directory / INDEX_JSON).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, sort_keys=True))
    return directory


def load_index(directory: Path) -> InfluenceIndex:
    meta = json.loads((directory / INDEX_JSON).read_text())
    if meta.get("format") not in READABLE:
        raise ValueError(
            f"{directory / INDEX_JSON}: unknown index format {meta.get('format')!r} (this version reads "
            f"{', '.join(READABLE)}; rebuild the index by training the adapter again with this version)"
        )
    return InfluenceIndex(load_file(str(directory / INDEX_TENSORS)), meta, directory)


def layer_normalised(x: torch.Tensor, slices: list[tuple[int, int]]) -> torch.Tensor:
    out = x.float().clone()
    for off, d in slices:
        part = out[..., off : off + d]
        part /= part.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return out


def scores(
    index: InfluenceIndex, queries: dict[str, torch.Tensor], checkpoints: list[str] | None = None
) -> torch.Tensor:
    """Per training example, the per-layer-normalised gradient cosine with the query, summed over checkpoints.

    `queries` maps checkpoint name -> projected query gradient (dims,) or (queries, dims); with only `final`
    available, pass it for every checkpoint (the query gradient is then taken at the final adapter).
    """
    names = checkpoints or [c for c in index.tensors if c in queries]
    slices = index.layer_slices()
    total: torch.Tensor | None = None
    for name in names:
        train = layer_normalised(index.tensors[name], slices)
        q = layer_normalised(queries[name].reshape(-1, train.shape[1]), slices)
        s = q @ train.T / len(slices)
        total = s if total is None else total + s
    if total is None:
        raise ValueError("no checkpoint in common between the index and the query")
    return total.squeeze(0)
