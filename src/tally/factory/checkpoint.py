"""Checkpoints that make `--resume` exact: LoRA weights, optimizer moments, RNG state, the loop's state.

Tensors go to one safetensors file, everything else to JSON; nothing is pickled, so a checkpoint from someone
else can be resumed safely. A checkpoint is written to a temporary directory, synced and renamed into place, so a
crash (or a power loss) while saving leaves the previous checkpoint intact and never a latest one half written.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from tally.factory.errors import FactoryError
from tally.factory.publication import fsync_path

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
_BEST = "best/"  # tensor names: best/<parameter>, infl/epoch_<n> (the names checkpoints have always used)
_EPOCH = re.compile(r"infl/epoch_([1-9][0-9]*)")
_EPOCH_WEIGHTS = re.compile(r"weights/epoch_([1-9][0-9]*)/(.+)")  # weights/epoch_<n>/<parameter>


@dataclass
class TrainState:
    """The training loop's own state: with the weights, optimizer moments and RNG state, what an exact resume needs."""

    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, padding excluded
    log_lines: int = 0  # lines of the training log up to this state (a resume truncates the log there)
    best_eval: float | None = None
    bad_evals: int = 0  # evaluations in a row without improvement (early stopping)
    stopped_early: bool = False
    best_weights: dict[str, torch.Tensor] = field(default_factory=dict)  # trainable parameter -> value at best eval
    epoch_grads: dict[int, torch.Tensor] = field(default_factory=dict)  # epoch (from 1) -> (examples, dims) fp16
    # epoch (from 1) -> trainable parameter -> its value when that epoch started (fp16): the query side of TracIn
    epoch_weights: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)

    def counters(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "log_lines": self.log_lines, "best_eval": self.best_eval,
                "bad_evals": self.bad_evals, "stopped_early": self.stopped_early}  # fmt: skip

    def tensors(self) -> dict[str, torch.Tensor]:
        named = {f"{_BEST}{name}": value for name, value in self.best_weights.items()}
        weights = {
            f"weights/epoch_{epoch}/{name}": value
            for epoch, values in self.epoch_weights.items()
            for name, value in values.items()
        }
        return named | weights | {f"infl/epoch_{epoch}": grads for epoch, grads in self.epoch_grads.items()}

    @classmethod
    def restore(cls, path: Path, counters: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TrainState:
        state = cls(**{key: counters[key] for key in cls().counters()})
        for key, value in tensors.items():
            epoch = _EPOCH.fullmatch(key)
            weights = _EPOCH_WEIGHTS.fullmatch(key)
            if key.startswith(_BEST):
                state.best_weights[key.removeprefix(_BEST)] = value
            elif epoch:
                state.epoch_grads[int(epoch.group(1))] = value
            elif weights:
                state.epoch_weights.setdefault(int(weights.group(1)), {})[weights.group(2)] = value
            else:
                raise FactoryError(f"checkpoint {path} holds a tensor {key!r} this version does not know")
        return state


def checkpoints_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoints_dir(out_dir).glob("step-*") if (p / STATE_JSON).is_file())
    return found[-1] if found else None


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState) -> Path:
    tensors: dict[str, torch.Tensor] = {
        f"param/{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
    }
    opt = optimizer.state_dict()
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"opt/{idx}/{key}"] = torch.as_tensor(value).clone()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update(state.tensors())
    final = checkpoints_dir(out_dir) / f"step-{state.step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps({**state.counters(), "param_groups": opt["param_groups"]}, indent=1))
    for path in (tmp / STATE_TENSORS, tmp / STATE_JSON, tmp):  # on disk before the rename makes it the latest
        fsync_path(path)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    fsync_path(final.parent)
    return final


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> TrainState:
    """Restore weights, optimizer and RNG in place; returns the loop's state."""
    tensors = load_file(str(path / STATE_TENSORS))
    state = json.loads((path / STATE_JSON).read_text())
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in [k for k in tensors if k.startswith("param/")]:
            params[key[len("param/") :]].copy_(tensors.pop(key))
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key in [k for k in tensors if k.startswith("opt/")]:
        _, idx, name = key.split("/", 2)
        opt_state.setdefault(int(idx), {})[name] = tensors.pop(key)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state.pop("param_groups")})
    torch.set_rng_state(tensors.pop("rng/torch"))
    return TrainState.restore(path, state, tensors)


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    found = sorted(p for p in checkpoints_dir(out_dir).glob("step-*") if p.is_dir())
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)
