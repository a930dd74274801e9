"""The training loop's typed state goes through checkpoints whole, under the tensor and JSON names they always had."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tally.factory.checkpoint import STATE_JSON, STATE_TENSORS, TrainState, load_checkpoint, save_checkpoint
from tally.factory.errors import FactoryError


def _model_and_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    return model, opt


def _state(model: torch.nn.Module) -> TrainState:
    return TrainState(
        step=6, tokens=120, log_lines=9, best_eval=2.5, bad_evals=1, stopped_early=False,
        best_weights={n: p.detach().clone() + 1 for n, p in model.named_parameters()},
        epoch_grads={1: torch.ones(4, 8, dtype=torch.float16), 2: torch.zeros(4, 8, dtype=torch.float16)},
    )  # fmt: skip


def test_the_state_round_trips_under_the_names_checkpoints_have_always_used(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    state = _state(model)
    path = save_checkpoint(tmp_path, model, opt, state)
    assert path.name == "step-0000006"
    names = set(load_file(str(path / STATE_TENSORS)))
    assert {"best/weight", "best/bias", "infl/epoch_1", "infl/epoch_2", "rng/torch"} <= names
    counters = json.loads((path / STATE_JSON).read_text())
    assert {k: counters[k] for k in ("step", "tokens", "log_lines", "best_eval", "bad_evals", "stopped_early")} == {
        "step": 6, "tokens": 120, "log_lines": 9, "best_eval": 2.5, "bad_evals": 1, "stopped_early": False,
    }  # fmt: skip

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=0.1)
    loaded = load_checkpoint(path, fresh, fresh_opt)
    assert loaded.counters() == state.counters()
    assert loaded.best_weights.keys() == state.best_weights.keys()
    assert all(torch.equal(loaded.best_weights[n], state.best_weights[n]) for n in state.best_weights)
    assert sorted(loaded.epoch_grads) == [1, 2] and torch.equal(loaded.epoch_grads[1], state.epoch_grads[1])
    assert all(torch.equal(a, b) for a, b in zip(fresh.parameters(), model.parameters(), strict=True))


def test_an_unknown_tensor_in_a_checkpoint_is_refused_by_name(tmp_path: Path) -> None:
    model, opt = _model_and_optimizer()
    path = save_checkpoint(tmp_path, model, opt, _state(model))
    tensors = load_file(str(path / STATE_TENSORS))
    save_file({**tensors, "infl/epoch_x": torch.zeros(1)}, str(path / STATE_TENSORS))
    with pytest.raises(FactoryError, match="'infl/epoch_x'"):
        load_checkpoint(path, model, opt)
