"""From each signal's scores to contributor shares: null baselines, originality, and the weighted combination.

Index signals (representation, gradient, DataInf, contrast) give one score per training row. Scores are standardised
over the rows still in the index (z-scores), so methods on different scales combine; a row is evidence only when it
stands `min_z` above the rest. Influence methods (`null_gated`: gradient, DataInf, contrast, and spans and context with
their own nulls) count only if they beat their null baseline: the top z-score a randomly initialised adapter of
the same shape reaches (calibrated per adapter on its first answers, see the service). Representation similarity
is reported against that null too, but counts on `min_z` alone: a random LoRA is close to the base model, which
already sees surface style, so its null says little about similarity (measured: it rejected a right top row half
the time). Near-duplicate rows of different
contributors (centred representation cosine >= `duplicate_similarity`) are one item credited to the earliest
contribution in the ledger, so re-submitting paraphrased copies of someone's rows earns the copier nothing.
Per contributor, a method's weight is its best row (not a sum), so volume alone does not buy share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tally.attribution.record import Evidence, MethodResult, Share
from tally.config import AttributionSettings


@dataclass(frozen=True)
class Source:
    """Where a training row or retrieved chunk came from; `seq` (the contribution's ledger entry) orders originality."""

    row_hash: str
    datanet: str
    contribution: str
    contributor: str
    seq: int


@dataclass
class Distribution:
    """One method's view: contributor -> weight (sums to 1) and the contributions behind it."""

    weights: dict[str, float]
    contributions: dict[str, set[str]]


def make_evidence(src: Source, score: float, **extra: object) -> Evidence:
    return Evidence(
        row_hash=src.row_hash, datanet=src.datanet, contribution=src.contribution, contributor=src.contributor,
        score=round(score, 6), **extra,
    )  # fmt: skip


def zscores(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scores standardised over the rows still in the index; -inf for the others."""
    live = scores[valid]
    if live.numel() < 2:
        return torch.where(valid, torch.zeros_like(scores), torch.full_like(scores, -math.inf))
    z = (scores - live.mean()) / live.std().clamp_min(1e-12)
    return torch.where(valid, z, torch.full_like(z, -math.inf))


def _softmax(best: dict[str, float]) -> dict[str, float]:
    top = max(best.values())
    raw = {k: math.exp(v - top) for k, v in best.items()}
    total = sum(raw.values())
    return {k: v / total for k, v in raw.items()}


def top_z(scores: torch.Tensor, valid: torch.Tensor) -> float:
    """The statistic every index method is judged by: its best row's z-score over the rows still in the index."""
    return float(zscores(scores.float(), valid).max()) if bool(valid.any()) else 0.0


def index_method(
    name: str,
    z: torch.Tensor,
    null: float,
    sources: list[Source],
    valid: torch.Tensor,
    cfg: AttributionSettings,
    duplicates: Callable[[list[int]], torch.Tensor] | None = None,
) -> tuple[MethodResult, Distribution]:
    """`z`: the method's scores as `zscores`; `null`: the statistic a randomly initialised adapter reaches (see the
    service for how it is calibrated)."""
    stat = float(z.max()) if bool(valid.any()) else 0.0  # top_z, from the z-scores already at hand
    beat = stat >= cfg.min_z and stat > null
    order = torch.argsort(z, descending=True)[: 3 * cfg.top_k].tolist()
    candidates = [i for i in order if float(z[i]) >= cfg.min_z]
    credited = {i: i for i in candidates}
    if duplicates is not None and candidates:
        sims = duplicates(candidates)
        for row, i in enumerate(candidates):
            twins = torch.nonzero((sims[row] >= cfg.duplicate_similarity) & valid).flatten().tolist()
            credited[i] = min([i, *twins], key=lambda j: (sources[j].seq, j))
    best: dict[str, float] = {}
    contributions: dict[str, set[str]] = {}
    for i in candidates:
        src = sources[credited[i]]
        best[src.contributor] = max(best.get(src.contributor, -math.inf), float(z[i]))
        contributions.setdefault(src.contributor, set()).add(src.contribution)
    result = MethodResult(
        method=name, top=[make_evidence(sources[i], float(z[i])) for i in candidates[: cfg.top_k]],
        score=round(stat, 6), null_score=round(null, 6), beat_null=beat,
    )  # fmt: skip
    return result, Distribution(_softmax(best) if best else {}, contributions)


def combine(results: dict[str, MethodResult], dists: dict[str, Distribution], cfg: AttributionSettings) -> list[Share]:
    """Weighted mean of the distributions of the methods that count (those in `null_gated` only when they beat their
    null, the others when their top row stands `min_z` out); small shares dropped, the rest renormalised."""
    total: dict[str, float] = {}
    contributions: dict[str, set[str]] = {}
    weight_sum = 0.0
    for name, result in results.items():
        dist = dists.get(name)
        counts = result.beat_null if name in cfg.null_gated else result.score >= cfg.min_z
        weight = cfg.weights.get(name, 0.0) if counts and dist and dist.weights else 0.0
        result.weight = weight
        if weight <= 0 or dist is None:
            continue
        weight_sum += weight
        for who, w in dist.weights.items():
            total[who] = total.get(who, 0.0) + weight * w
            contributions.setdefault(who, set()).update(dist.contributions.get(who, set()))
    if weight_sum <= 0:
        return []
    kept = {k: v / weight_sum for k, v in total.items() if v / weight_sum >= cfg.min_share}
    norm = sum(kept.values())
    return [
        Share(account=k, share=v / norm, contributions=sorted(contributions[k]))
        for k, v in sorted(kept.items(), key=lambda kv: (-kv[1], kv[0]))
    ]
