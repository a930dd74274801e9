"""The index scorers equal their definitions computed the slow way."""

from __future__ import annotations

import torch

from tally.influence import IndexScorer, InfluenceIndex, scores
from tally.influence.scoring import DATAINF_DAMPING


def _index(rows: int = 12, layers: tuple[int, ...] = (5, 7), hidden: int = 6) -> InfluenceIndex:
    gen = torch.Generator().manual_seed(0)
    dims = sum(layers)
    offsets = [sum(layers[:i]) for i in range(len(layers))]
    tensors = {name: torch.randn(rows, dims, generator=gen).half() for name in ("epoch_1", "final")}
    tensors["hidden_mean"] = torch.randn(rows, hidden, generator=gen).half()
    meta = {
        "projection": {"layers": [{"offset": o, "dims": d} for o, d in zip(offsets, layers, strict=True)]},
        "checkpoints": [{"name": "epoch_1"}, {"name": "final"}],
        "representation": {"tensor": "hidden_mean"},
        "examples": [{"row_hash": str(i)} for i in range(rows)],
    }
    return InfluenceIndex(tensors, meta)


def test_folded_cosine_equals_the_per_checkpoint_sum() -> None:
    index = _index()
    q = torch.randn(12)
    expected = scores(index, {"epoch_1": q, "final": q})
    assert torch.allclose(IndexScorer(index).cosine(q), expected, atol=2e-2)


def test_tracin_takes_each_checkpoints_own_query() -> None:
    index = _index()
    q1, q2 = torch.randn(12), torch.randn(12)
    scorer = IndexScorer(index)
    got = scorer.tracin({"epoch_1": q1, "final": q2})
    assert torch.allclose(got, scores(index, {"epoch_1": q1, "final": q2}), atol=2e-2)
    assert not torch.allclose(got, scorer.cosine(q2), atol=5e-2)  # not the served adapter's query everywhere
    # a checkpoint without its own query gradient uses the served adapter's: then it is the folded cosine
    assert torch.allclose(scorer.tracin({"final": q2}), scorer.cosine(q2), atol=2e-2)


def test_datainf_equals_the_closed_form_written_row_by_row() -> None:
    index = _index()
    q = torch.randn(12)
    expected = torch.zeros(12)
    for name in ("epoch_1", "final"):
        g = index.tensors[name].float()
        for off, d in index.layer_slices():
            gl, v = g[:, off : off + d], q[off : off + d]
            lam = DATAINF_DAMPING * float((gl * gl).sum(dim=1).mean())
            hinv_v = sum(v - (gi @ v) / (lam + gi @ gi) * gi for gi in gl) / (len(gl) * lam)
            expected += gl @ hinv_v
    got = IndexScorer(index).datainf(q)
    assert torch.allclose(got, expected, rtol=2e-2, atol=2e-2 * float(expected.abs().max()))
    assert torch.equal(torch.argsort(got, descending=True)[:3], torch.argsort(expected, descending=True)[:3])


def test_representation_is_the_centred_cosine() -> None:
    index = _index()
    h = index.tensors["hidden_mean"].float()
    centred = h - h.mean(dim=0)
    q = torch.randn(6)
    expected = torch.nn.functional.cosine_similarity(centred, (q - h.mean(dim=0)).unsqueeze(0), dim=1)
    scorer = IndexScorer(index)
    assert torch.allclose(scorer.representation(q), expected, atol=1e-5)
    twins = scorer.row_similarity([3])
    assert twins.shape == (1, 12) and abs(float(twins[0, 3]) - 1) < 1e-5
