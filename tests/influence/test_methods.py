"""The influence methods added beside cosine and DataInf: Gauss-Newton scoring, contrastive token weights, and the
index format's candidate rows; each checked against its definition computed the slow way, or on a constructed case
whose answer is known."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tally.influence import GradCapture, IndexScorer, InfluenceIndex, Projector, load_index, save_index
from tally.influence.contrast import contrast_weights
from tally.influence.index import layer_normalised
from tally.influence.scoring import GN_DAMPING, inverse_sqrt_fisher


def _index(rows: int = 16, layers: tuple[int, ...] = (5, 7)) -> InfluenceIndex:
    gen = torch.Generator().manual_seed(3)
    dims = sum(layers)
    offsets = [sum(layers[:i]) for i in range(len(layers))]
    tensors = {name: torch.randn(rows, dims, generator=gen).half() for name in ("epoch_1", "final")}
    meta = {
        "projection": {"layers": [{"offset": o, "dims": d} for o, d in zip(offsets, layers, strict=True)]},
        "checkpoints": [{"name": "epoch_1"}, {"name": "final"}],
        "examples": [{"row_hash": str(i)} for i in range(rows)],
    }
    return InfluenceIndex(tensors, meta)


def test_gauss_newton_equals_the_explicit_inverse_fisher_formula() -> None:
    index = _index()
    q = torch.randn(12, generator=torch.Generator().manual_seed(4))
    slices = index.layer_slices()
    expected = torch.zeros(16, dtype=torch.float64)
    normed = {name: layer_normalised(index.tensors[name], slices).double() for name in ("epoch_1", "final")}
    qn = layer_normalised(q, slices).double()
    for off, d in slices:
        pooled = torch.cat([g[:, off : off + d] for g in normed.values()])  # one Fisher over the checkpoints
        fisher = pooled.T @ pooled / len(pooled)
        fisher += GN_DAMPING * torch.trace(fisher) / d * torch.eye(d, dtype=torch.float64)
        inv = torch.linalg.inv(fisher)
        ql = qn[off : off + d]
        for g in normed.values():
            gl = g[:, off : off + d]
            for k in range(len(gl)):
                expected[k] += (ql @ inv @ gl[k]) / torch.sqrt((ql @ inv @ ql) * (gl[k] @ inv @ gl[k])) / len(slices)
    got = IndexScorer(index).gauss_newton(q)
    assert torch.allclose(got.double(), expected, atol=3e-2)
    assert torch.equal(torch.argsort(got, descending=True)[:3], torch.argsort(expected, descending=True)[:3])


def test_inverse_sqrt_fisher_squares_to_the_damped_inverse() -> None:
    g = torch.randn(9, 4, generator=torch.Generator().manual_seed(5))
    w = inverse_sqrt_fisher(g).double()
    fisher = g.double().T @ g.double() / 9
    damped = fisher + GN_DAMPING * torch.trace(fisher) / 4 * torch.eye(4, dtype=torch.float64)
    assert torch.allclose(w @ w, torch.linalg.inv(damped), atol=1e-5)
    assert torch.allclose(w, w.T, atol=1e-6)


def test_gauss_newton_finds_the_row_a_shared_direction_hides_from_the_cosine() -> None:
    """Every row carries one large common direction (what any answer's gradient looks like) plus its own part, of
    its own size. The query is the common direction plus a little of row 7's part. Rows with a small own part look
    most like the query to the plain cosine; whitening by the rows' Fisher removes the common direction and finds
    row 7."""
    rows = 40
    basis = torch.eye(rows + 1)
    common, own = basis[0], basis[1:]
    scale = torch.linspace(0.1, 1.0, rows)
    scale[7] = 4.0
    g = 4 * common + own * scale.unsqueeze(1)
    index = InfluenceIndex(
        {"final": g.half()},
        {"projection": {"layers": [{"offset": 0, "dims": rows + 1}]}, "checkpoints": [{"name": "final"}],
         "examples": [{"row_hash": str(i)} for i in range(rows)]},
    )  # fmt: skip
    q = 4 * common + own[7]
    scorer = IndexScorer(index)
    assert int(scorer.cosine(q).argmax()) == 0
    assert int(scorer.gauss_newton(q).argmax()) == 7


def test_contrast_weights_follow_the_rise_over_the_base_model() -> None:
    adapter = torch.tensor([[-0.1, -3.0, -0.5, -2.0]])
    base = torch.tensor([[-2.1, -3.0, -0.2, -2.5]])
    w = contrast_weights(adapter, base)
    assert torch.allclose(w, torch.tensor([[2.0, 0.0, 0.0, 0.5]]) / 2.5)
    # nothing rose: the plain mean loss
    assert torch.allclose(contrast_weights(base, base), torch.full((1, 4), 0.25))


class _Pair(nn.Module):
    """One LoRA-named linear (zero-initialised, as a LoRA B starts) on top of a frozen random feature map."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Linear(8, 8, bias=False).requires_grad_(False)
        self.model = nn.ModuleDict({"layers": nn.ModuleList([nn.ModuleDict({"lora_B": nn.ModuleDict(
            {"default": nn.Linear(8, 4, bias=False)})})])})  # fmt: skip
        nn.init.zeros_(self.model["layers"][0]["lora_B"]["default"].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model["layers"][0]["lora_B"]["default"](torch.tanh(self.features(x)))


def test_the_example_that_caused_the_behaviour_scores_highest() -> None:
    """Two training examples, both with a large shared input; only A's target is what the query asks for. TracIn
    checkpoints captured while training, Gauss-Newton and cosine scoring: A scores above B under both."""
    gen = torch.Generator().manual_seed(1)
    shared = torch.randn(1, 8, generator=gen) * 2
    xa, xb = shared + 0.5 * torch.randn(1, 8, generator=gen), shared + 0.5 * torch.randn(1, 8, generator=gen)
    ya, yb = torch.tensor([[1.0, -1.0, 0.5, 0.0]]), torch.tensor([[-1.0, 0.0, 0.0, 1.0]])
    x, y = torch.cat([xa, xb]).unsqueeze(1), torch.cat([ya, yb]).unsqueeze(1)
    model = _Pair()
    projector = Projector.for_model(model, 32, seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.2)
    checkpoints: dict[str, torch.Tensor] = {}
    with GradCapture(model, projector) as capture:
        for epoch in range(1, 4):
            capture.begin(2)
            ((model(x) - y) ** 2).sum(dim=(1, 2)).sum().backward()
            checkpoints[f"epoch_{epoch}"] = capture.result()
            opt.step()
            opt.zero_grad()
        xq = (shared + 0.5 * torch.randn(1, 8, generator=gen)).unsqueeze(1)  # a new input, A's behaviour asked
        capture.begin(1)
        ((model(xq) - ya.unsqueeze(1)) ** 2).sum().backward()
        query = capture.result()[0]
    index = InfluenceIndex(
        checkpoints,
        {"projection": {"layers": [{"offset": 0, "dims": 32}]},
         "checkpoints": [{"name": n} for n in checkpoints], "examples": [{"row_hash": "a"}, {"row_hash": "b"}]},
    )  # fmt: skip
    scorer = IndexScorer(index)
    for scores in (scorer.cosine(query), scorer.gauss_newton(query)):
        assert float(scores[0]) > float(scores[1])


def test_candidate_rows_and_older_formats_load(tmp_path: Path) -> None:
    meta = {"projection": {"layers": [{"offset": 0, "dims": 4}]}, "checkpoints": [{"name": "final"}],
            "examples": [{"row_hash": "a"}, {"row_hash": "b", "trained": False}, {"row_hash": "c"}]}  # fmt: skip
    save_index(tmp_path / "v2", {"final": torch.randn(3, 4)}, meta)
    assert load_index(tmp_path / "v2").untrained() == [1]
    # an index written by the previous version: same tensors, format 1, no flags
    save_index(tmp_path / "v1", {"final": torch.randn(3, 4)}, meta | {"examples": [{"row_hash": "a"}]})
    path = tmp_path / "v1" / "index.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format": "tally.influence/1"}))
    old = load_index(tmp_path / "v1")
    assert old.untrained() == [] and old.meta["format"] == "tally.influence/1"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"format": "tally.influence/9"}))
    with pytest.raises(ValueError, match="unknown index format 'tally.influence/9'.*rebuild"):
        load_index(tmp_path / "v1")
