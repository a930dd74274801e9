"""Build the training-data index for attribution at the end of training (see tally.influence).

The final pass runs every training row through the trained adapter without dropout, one batched backward per
batch with per-example capture hooks, and stores the projections beside those captured during each epoch, and
each row's mean hidden state (representation similarity) from the same forward. Its matrix products run in bf16
where the hardware has native bf16 (`influence.precision`); the gradients are formed and projected in fp32.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from tally.engine.files import CONFIG_FILE as ADAPTER_CONFIG
from tally.engine.files import WEIGHTS_FILE as ADAPTER_WEIGHTS
from tally.engine.native import cpu_flags
from tally.factory.data import Example
from tally.factory.encode import Encoded, collate, length_groups, token_losses
from tally.factory.provenance import directory_hash
from tally.influence import HiddenCapture, Projector, example_gradients, save_index

REPRESENTATION = "hidden_mean"
CHECKPOINTS = "checkpoints"  # influence/checkpoints/<epoch_N>/: the adapter epoch N started from (PEFT format)
NATIVE_BF16 = {"avx512_bf16", "amx_bf16"}  # /proc/cpuinfo flags of CPUs that multiply bf16 in hardware


def pass_precision(setting: str) -> str:
    """`fp32` or `bf16` for the final pass (the factory trains on the CPU). `auto` is bf16 only where the CPU
    multiplies bf16 natively: there a bf16 matrix product of these shapes runs 2.0-2.6x fp32's, while an emulated
    one (AVX2 only) is slower than fp32."""
    if setting != "auto":
        return setting
    return "bf16" if NATIVE_BF16 & cpu_flags() and torch.backends.mkldnn.is_available() else "fp32"


def save_checkpoint_adapter(model: Any, weights: dict[str, torch.Tensor], out_dir: Path, target: Path) -> None:
    """One epoch's LoRA weights as a PEFT adapter directory (the trained adapter's config, these weights)."""
    from peft.utils import get_peft_model_state_dict

    target.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(model, state_dict=dict(weights))
    save_file({k: v.contiguous() for k, v in state.items()}, str(target / ADAPTER_WEIGHTS))
    shutil.copyfile(out_dir / ADAPTER_CONFIG, target / ADAPTER_CONFIG)


def final_gradients(
    model: Any,
    items: list[Encoded],
    projector: Projector,
    batch_size: int,
    pad: int,
    progress: Callable[[int, int], None] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(examples, dims) projected gradients of each example's mean target loss at the current weights, and
    (examples, hidden) mean final hidden states over its answer-predicting positions, from the same forward.

    `precision` "bf16" runs the forward under bf16 autocast (the backward follows it); the capture hooks form and
    project the gradients in fp32 either way."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}")
    device = next(model.parameters()).device
    hidden: list[torch.Tensor] = []
    with HiddenCapture(model) as capture:

        def mean_loss(m: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            capture.begin(batch["labels"])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                sums, counts = token_losses(m, batch)
            hidden.append(capture.result())
            return sums / counts.clamp_min(1)

        groups = length_groups([len(x.input_ids) for x in items], batch_size)
        batches = (collate([items[i] for i in group], pad) for group in groups)
        report = (lambda done: progress(done, len(items))) if progress else None
        grads = example_gradients(model, projector, batches, mean_loss, report)
    if not hidden:
        return grads, torch.zeros(0, 0)
    # batches ran in length order; rows go back to the order of `items`
    back = torch.argsort(torch.tensor([i for group in groups for i in group]))
    return grads[back], torch.cat(hidden)[back]


def build_index(
    out_dir: Path,
    model: Any,
    examples: list[Example],
    items: list[Encoded],
    projector: Projector,
    epoch_grads: dict[str, torch.Tensor],
    epoch_lrs: dict[str, float],
    batch_size: int,
    pad: int,
    progress: Callable[[int, int], None] | None = None,
    epoch_weights: dict[str, dict[str, torch.Tensor]] | None = None,
    precision: str = "auto",
) -> dict[str, Any]:
    """Write `<out>/influence/`; returns its summary (hash, dims, checkpoints, cost) for the manifest.

    `epoch_weights` (checkpoint name -> trainable parameter -> its value when that epoch started) are written as
    PEFT adapter directories under `influence/checkpoints/<name>/`, so attribution can take the query's gradient
    at the weights each epoch's rows were trained from, not only at the served adapter's (TracIn). `precision` is
    the `influence.precision` setting; the precision it resolved to is recorded in the index's `cost`."""
    start = time.monotonic()
    precision = pass_precision(precision)
    final, hidden = final_gradients(model, items, projector, batch_size, pad, progress, precision)
    seconds = time.monotonic() - start
    tensors = {**epoch_grads, "final": final, REPRESENTATION: hidden}
    kept = {name: w for name, w in (epoch_weights or {}).items() if name in epoch_grads}
    meta = {
        "projection": projector.describe(),
        "representation": {"tensor": REPRESENTATION, "pooling": "mean final hidden state, answer-predicting positions"},
        "checkpoints": [
            {"name": k, "lr": epoch_lrs.get(k)} | ({"adapter": f"{CHECKPOINTS}/{k}"} if k in kept else {})
            for k in sorted(epoch_grads)
        ]
        + [{"name": "final"}],
        "examples": [
            {
                "row_hash": e.row_hash,
                "datanet": e.datanet,
                "snapshot": e.snapshot,
                "contribution": e.contribution,
                "contributor": e.contributor,
                "target_tokens": it.target_tokens,
            }
            for e, it in zip(examples, items, strict=True)
        ],
        "cost": {"final_pass_seconds": seconds, "examples": len(items), "final_pass_precision": precision},
    }
    directory = save_index(out_dir / "influence", tensors, meta)
    for name, weights in sorted(kept.items()):
        save_checkpoint_adapter(model, weights, out_dir, directory / CHECKPOINTS / name)
    return {
        "hash": directory_hash(directory),
        "dims": projector.dims,
        "checkpoints": sorted(set(tensors) - {REPRESENTATION}),
        "final_pass_seconds": round(seconds, 3),
        "bytes": sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()),
    }
