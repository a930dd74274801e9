"""Build the training-data index for attribution at the end of training (see tally.influence).

`final` holds each row's projected gradient of its own mean answer loss and its mean hidden state (representation
similarity) as the last epoch's training steps captured them: the forward and backward that trained on the row,
at that step's weights, with dropout as trained. A separate pass over all rows at the trained adapter would cost
as much as most of an epoch; the last epoch's capture costs the hooks only. Rows the last epoch did not reach
(`max_steps` ended it early) and every row of a run whose weights went back to an earlier best (early stopping) get
that pass instead: one batched backward per batch with per-example capture hooks, without dropout.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tally.factory.data import Example
from tally.factory.encode import Encoded, collate, token_losses
from tally.factory.provenance import directory_hash
from tally.influence import HiddenCapture, Projector, example_gradients, save_index

REPRESENTATION = "hidden_mean"


@dataclass
class TrainedCapture:
    """What the last epoch's training steps captured: (examples, dims) projected gradients, (examples, hidden) mean
    hidden states, and (examples,) which rows they reached."""

    grads: torch.Tensor
    hidden: torch.Tensor
    rows: torch.Tensor


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
    captured: TrainedCapture | None = None,
) -> dict[str, Any]:
    """Write `<out>/influence/`; returns its summary (hash, dims, checkpoints, cost) for the manifest.

    With `captured`, rows it reached keep what training captured; the rest get a pass at the current weights."""
    start = time.monotonic()
    final, hidden, missing = _complete(model, items, projector, batch_size, pad, progress, captured)
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
        "final": {
            "from_training": len(items) - len(missing),
            "recomputed": len(missing),
            "how": "last epoch's training steps (their weights, dropout as trained); recomputed rows: a pass at "
            "the trained adapter without dropout",
        },
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


def _complete(
    model: Any,
    items: list[Encoded],
    projector: Projector,
    batch_size: int,
    pad: int,
    progress: Callable[[int, int], None] | None,
    captured: TrainedCapture | None,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """`final` gradients and hidden states for every row: the captured ones, and a pass for the rows it lacks."""
    if captured is None:
        grads, hidden = final_gradients(model, items, projector, batch_size, pad, progress)
        return grads, hidden, list(range(len(items)))
    missing = (~captured.rows).nonzero().flatten().tolist()
    grads, hidden = captured.grads.float().clone(), captured.hidden.float().clone()
    if missing:
        g, h = final_gradients(model, [items[i] for i in missing], projector, batch_size, pad, None)
        grads[missing], hidden[missing] = g, h
    if progress:
        progress(len(items), len(items))
    return grads, hidden, missing
