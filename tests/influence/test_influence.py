"""Per-example LoRA gradients captured in a batched pass equal one-at-a-time gradients, projected the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.conftest import assert_close
from torch import nn

from tally.influence import (
    GradCapture,
    Projector,
    example_gradients,
    load_index,
    project_weight_grads,
    save_index,
    scores,
)
from tally.influence.projection import lora_modules


class Tiny(nn.Module):
    """Two 'layers' of LoRA-named linears, enough for the capture hooks and the per-layer split."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.ModuleDict({
            "layers": nn.ModuleList(
                nn.ModuleDict({"lora_A": nn.ModuleDict({"default": nn.Linear(6, 3, bias=False)}),
                               "lora_B": nn.ModuleDict({"default": nn.Linear(3, 6, bias=False)})})
                for _ in range(2)
            )
        })  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.model["layers"]:
            x = x + layer["lora_B"]["default"](torch.tanh(layer["lora_A"]["default"](x)))
        return x


def _per_example_loss(model: Tiny, x: torch.Tensor) -> torch.Tensor:
    return (model(x) ** 2).mean(dim=(1, 2))


def test_projector_is_seeded_and_splits_dims_per_layer() -> None:
    model = Tiny()
    a, b = Projector.for_model(model, 10, seed=3), Projector.for_model(model, 10, seed=3)
    assert [s.dims for s in a.layers] == [5, 5] and [s.offset for s in a.layers] == [0, 5]
    name = next(iter(a.shapes))
    assert torch.equal(a.sketch(name)[0], b.sketch(name)[0])
    assert not torch.equal(a.sketch(name)[0], Projector.for_model(model, 10, seed=4).sketch(name)[0])
    with pytest.raises(ValueError):
        Projector.for_model(model, 1)


def test_batched_capture_equals_one_at_a_time_gradients() -> None:
    model = Tiny()
    projector = Projector.for_model(model, 64, seed=0)
    x = torch.randn(4, 5, 6)
    with GradCapture(model, projector) as capture:
        capture.begin(4)
        _per_example_loss(model, x).sum().backward()
        batched = capture.result()
    modules = lora_modules(model)
    for i in range(4):
        model.zero_grad()
        _per_example_loss(model, x[i : i + 1]).sum().backward()
        expected = torch.zeros(1, 64)
        for name, mod in modules.items():
            projector.add(name, mod.weight.grad.unsqueeze(0), expected)
        assert_close(batched[i], expected[0], f"example {i}")
        # one example: the accumulated weight gradients are its own, projected without hooks (attribution's query)
        assert_close(project_weight_grads(model, projector), batched[i], f"example {i} from .grad")


def test_weight_gradients_of_the_selected_modules_only() -> None:
    model = Tiny()
    projector = Projector.for_model(model, 64, seed=0)
    _per_example_loss(model, torch.randn(1, 5, 6)).sum().backward()
    first = project_weight_grads(model, projector, only=lambda name: ".0." in name)
    second = project_weight_grads(model, projector, only=lambda name: ".1." in name)
    assert_close(first + second, project_weight_grads(model, projector), "both layers")
    assert first[32:].abs().max() == 0 and first[:32].abs().max() > 0  # layer 0's slice only
    with pytest.raises(ValueError, match="no trainable LoRA module"):
        project_weight_grads(model, projector, only=lambda name: False)
    with pytest.raises(ValueError, match="no LoRA weight has a gradient"):
        project_weight_grads(Tiny(), projector)  # no backward ran


def test_index_round_trip_and_self_match(tmp_path: Path) -> None:
    torch.manual_seed(1)
    grads = torch.randn(5, 16)
    meta = {"projection": {"layers": [{"offset": 0, "dims": 8}, {"offset": 8, "dims": 8}]},
            "examples": [{"row_hash": str(i)} for i in range(5)]}  # fmt: skip
    save_index(tmp_path, {"final": grads, "epoch_1": grads * 2}, meta)
    index = load_index(tmp_path)
    assert index.tensors["final"].dtype == torch.float16 and len(index.examples) == 5
    s = scores(index, {"final": grads[2], "epoch_1": grads[2]})
    assert int(s.argmax()) == 2 and s.shape == (5,)
    assert not any(p.suffix in (".pt", ".pkl", ".bin") for p in tmp_path.iterdir())


def test_example_gradients_and_a_projector_rebuilt_from_its_description() -> None:
    model = Tiny()
    projector = Projector.for_model(model, 32, seed=5)
    rebuilt = Projector.from_description(json.loads(json.dumps(projector.describe())))
    name = next(iter(projector.shapes))
    assert torch.equal(projector.sketch(name)[0], rebuilt.sketch(name)[0])
    x = torch.randn(6, 5, 6)
    grads = example_gradients(model, rebuilt, [x[:4], x[4:]], _per_example_loss)
    with GradCapture(model, projector) as capture:
        capture.begin(6)
        _per_example_loss(model, x).sum().backward()
        assert_close(grads, capture.result(), "captured")


def test_checkpoint_adapters_are_followed_only_inside_the_index(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    meta = {
        "checkpoints": [
            {"name": "epoch_1", "adapter": "checkpoints/epoch_1"},
            {"name": "epoch_2", "adapter": "../elsewhere"},  # not the one form followed
            {"name": "epoch_3", "adapter": "checkpoints/epoch_3"},  # a link out of the index
            {"name": "epoch_4", "adapter": "checkpoints/epoch_4"},  # no weights file
            {"name": "final"},
        ]
    }
    tensors = {name: torch.zeros(2, 4) for name in ("epoch_1", "epoch_2", "epoch_3", "epoch_4", "final")}
    directory = save_index(tmp_path / "influence", tensors, meta)
    for where in (directory / "checkpoints" / "epoch_1", outside, directory / "checkpoints" / "epoch_4"):
        where.mkdir(parents=True, exist_ok=True)
        (where / "adapter_config.json").write_text("{}")
    for where in (directory / "checkpoints" / "epoch_1", outside):
        (where / "adapter_model.safetensors").write_bytes(b"")
    (directory / "checkpoints" / "epoch_3").symlink_to(outside)
    index = load_index(directory)
    assert index.checkpoint_adapters() == {"epoch_1": directory / "checkpoints" / "epoch_1"}
