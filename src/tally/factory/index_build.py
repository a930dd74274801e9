"""Build the training-data index for attribution at the end of training (see tally.influence).

The final pass runs every training row through the trained adapter without dropout, one batched backward per
batch with per-example capture hooks, and stores the projections beside those captured during each epoch, and
each row's mean hidden state (representation similarity) from the same forward.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tally.factory.data import Example
from tally.factory.encode import Encoded, collate, token_losses
from tally.factory.provenance import directory_hash
from tally.influence import HiddenCapture, Projector, example_gradients, save_index

REPRESENTATION = "hidden_mean"


def final_gradients(
    model: Any,
    items: list[Encoded],
    projector: Projector,
    batch_size: int,
    pad: int,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(examples, dims) projected gradients of each example's mean target loss at the current weights, and
    (examples, hidden) mean final hidden states over its answer-predicting positions, from the same forward."""
    hidden: list[torch.Tensor] = []
    with HiddenCapture(model) as capture:

        def mean_loss(m: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
            capture.begin(batch["labels"])
            sums, counts = token_losses(m, batch)
            hidden.append(capture.result())
            return sums / counts.clamp_min(1)

        batches = (collate(items[i : i + batch_size], pad) for i in range(0, len(items), batch_size))
        report = (lambda done: progress(done, len(items))) if progress else None
        grads = example_gradients(model, projector, batches, mean_loss, report)
    return grads, torch.cat(hidden) if hidden else torch.zeros(0, 0)


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
) -> dict[str, Any]:
    """Write `<out>/influence/`; returns its summary (hash, dims, checkpoints, cost) for the manifest."""
    start = time.monotonic()
    final, hidden = final_gradients(model, items, projector, batch_size, pad, progress)
    seconds = time.monotonic() - start
    tensors = {**epoch_grads, "final": final, REPRESENTATION: hidden}
    meta = {
        "projection": projector.describe(),
        "representation": {"tensor": REPRESENTATION, "pooling": "mean final hidden state, answer-predicting positions"},
        "checkpoints": [{"name": k, "lr": epoch_lrs.get(k)} for k in sorted(epoch_grads)] + [{"name": "final"}],
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
        "cost": {"final_pass_seconds": seconds, "examples": len(items)},
    }
    directory = save_index(out_dir / "influence", tensors, meta)
    return {
        "hash": directory_hash(directory),
        "dims": projector.dims,
        "checkpoints": sorted(set(tensors) - {REPRESENTATION}),
        "final_pass_seconds": round(seconds, 3),
        "bytes": sum(p.stat().st_size for p in directory.iterdir()),
    }
