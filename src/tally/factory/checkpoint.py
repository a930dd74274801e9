"""Checkpoints that make `--resume` exact: LoRA weights, optimizer moments, RNG state, loop counters.

Tensors go to one safetensors file, everything else to JSON; nothing is pickled, so a checkpoint from someone
else can be resumed safely. A checkpoint is written to a temporary directory and renamed into place, so a crash
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"


def checkpoints_dir(out_dir: Path) -> Path:
    return out_dir / "checkpoints"


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted(p for p in checkpoints_dir(out_dir).glob("step-*") if (p / STATE_JSON).is_file())
    return found[-1] if found else None


def save_checkpoint(
    out_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_tensors: dict[str, torch.Tensor],
    state: dict[str, Any],
) -> Path:
    tensors: dict[str, torch.Tensor] = {
        f"param/{n}": p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
    }
    opt = optimizer.state_dict()
    for idx, per_param in opt["state"].items():
        for key, value in per_param.items():
            tensors[f"opt/{idx}/{key}"] = torch.as_tensor(value).clone()
    tensors["rng/torch"] = torch.get_rng_state()
    tensors.update(extra_tensors)
    final = checkpoints_dir(out_dir) / f"step-{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS))
    (tmp / STATE_JSON).write_text(json.dumps({**state, "step": step, "param_groups": opt["param_groups"]}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(
    path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Restore weights, optimizer and RNG in place; returns the loop state and the remaining (extra) tensors."""
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
    return state, tensors


def prune_checkpoints(out_dir: Path, keep: int) -> None:
    found = sorted(p for p in checkpoints_dir(out_dir).glob("step-*") if p.is_dir())
    for old in found[:-keep] if keep > 0 else found:
        shutil.rmtree(old, ignore_errors=True)
