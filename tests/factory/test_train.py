"""Training on the tiny model: outputs, provenance, exact resume, early stopping, the ledger entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.datanets.conftest import World
from tests.factory.conftest import make_config

from tally.engine.manifest import manifest_text, read_adapter_manifest
from tally.factory import service
from tally.factory.checkpoint import latest_checkpoint
from tally.factory.index_build import pass_precision
from tally.factory.provenance import stabilise_adapter_config
from tally.factory.tables import AdapterRow
from tally.influence import load_index


def _weights(out: Path) -> dict:
    return load_file(str(out / "adapter_model.safetensors"))


def test_train_writes_adapter_card_manifest_index_and_ledger_entry(people: World, tiny_model: Path, tmp_path: Path):
    cfg = make_config(tiny_model, tmp_path / "out", data={"eval_fraction": 0.25}, output={"publish": True})
    events: list[dict] = []
    result = service.train(people.settings, people.ledger, people.dev, cfg, listeners=[events.append])
    out = result.out_dir
    assert result.finished
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "manifest.json",
                 "trainer_log.jsonl", "loss_curve.png"):  # fmt: skip
        assert (out / name).is_file(), name
    targets = json.loads((out / "adapter_config.json").read_text())["target_modules"]
    assert targets == sorted(targets)  # the same training gives the same bytes, whatever the hash seed
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and "tally:people@" in card and people.alice.address in card
    manifest = json.loads((out / "manifest.json").read_text())
    assert read_adapter_manifest(out) == result.manifest  # the typed manifest is what the file holds
    assert manifest_text(result.manifest) == (out / "manifest.json").read_text()
    assert manifest["data"]["contributors"] == {people.alice.address: 4, people.bob.address: 4}
    assert manifest["data"]["train_rows"] == 6 and manifest["data"]["eval_rows"] == 2
    train_events = [e for e in events if e["type"] == "train"]
    assert len(train_events) == 6 and {"loss", "lr", "tokens_per_s", "eta_s"} <= set(train_events[0])
    assert any(e["type"] == "eval" for e in events)
    entry = json.loads(people.ledger.entries(people.ledger.size() - 2, 2)[0])
    assert entry["type"] == "factory.adapter_trained"
    assert entry["payload"]["adapter_hash"] == result.adapter_hash == manifest["adapter"]["hash"]
    assert entry["payload"]["snapshots"][0]["rows"] == 8
    with people.ledger.store.read() as s:
        assert s.get(AdapterRow, result.adapter_hash).published == 1
    registry = json.loads((people.settings.data_dir / "adapters.json").read_text())
    assert registry["adapters"]["people-lora"]["adapter_id"] == result.adapter_hash
    index = load_index(out / "influence")
    assert set(index.tensors) == {"epoch_1", "epoch_2", "final", "hidden_mean"}
    assert index.meta["representation"]["tensor"] == "hidden_mean" and index.tensors["hidden_mean"].shape == (6, 32)
    assert index.tensors["final"].shape == (6, 64) and index.tensors["final"].abs().sum() > 0
    assert index.tensors["epoch_1"].abs().sum(dim=1).min() > 0  # every row was captured in epoch 1
    assert {e["contributor"] for e in index.examples} == {people.alice.address, people.bob.address}
    # the precision the final pass ran at is recorded: auto resolves to bf16 only on hardware with native bf16
    assert index.meta["cost"]["final_pass_precision"] == pass_precision("auto")
    # the weights each epoch started from are kept for TracIn queries: epoch 1 from the initial adapter (B = 0)
    kept = out / "influence" / "checkpoints"
    assert index.checkpoint_adapters() == {"epoch_1": kept / "epoch_1", "epoch_2": kept / "epoch_2"}
    start, second, served = _weights(kept / "epoch_1"), _weights(kept / "epoch_2"), _weights(out)
    assert start.keys() == served.keys() and start[next(iter(start))].dtype == torch.float16
    assert all(not v.any() for k, v in start.items() if "lora_B" in k)
    assert any(v.any() for k, v in second.items() if "lora_B" in k)  # epoch 1 moved them
    assert any(not torch.allclose(second[k].float(), served[k], atol=1e-3) for k in served)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_index_pass_runs_at_the_configured_precision(
    people: World, tiny_model: Path, tmp_path: Path, precision: str
) -> None:
    cfg = make_config(tiny_model, tmp_path / "out", influence={"precision": precision, "per_epoch": False})
    result = service.train(people.settings, people.ledger, people.dev, cfg)
    index = load_index(result.out_dir / "influence")
    assert index.meta["cost"]["final_pass_precision"] == precision
    assert index.tensors["final"].abs().sum(dim=1).min() > 0


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(people: World, tiny_model: Path, tmp_path: Path):
    kw = {"train": {"epochs": 3, "save_steps": 2, "grad_accum": 2, "batch_size": 1, "schedule": "cosine",
                    "warmup_ratio": 0.2}}  # fmt: skip
    full = service.train(people.settings, people.ledger, people.dev, make_config(tiny_model, tmp_path / "a", **kw))
    cfg = make_config(tiny_model, tmp_path / "b", **kw)
    partial = service.train(people.settings, people.ledger, people.dev, cfg, stop_after=7)
    assert not partial.finished and latest_checkpoint(partial.out_dir).name == "step-0000006"
    resumed = service.train(people.settings, people.ledger, people.dev, cfg, resume=True)
    a, b = _weights(full.out_dir), _weights(resumed.out_dir)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert full.adapter_hash == resumed.adapter_hash
    steps = [e["step"] for e in map(json.loads, (resumed.out_dir / "trainer_log.jsonl").read_text().splitlines())
             if e["type"] == "train"]  # fmt: skip
    assert steps == list(range(1, 13))  # the log reads like an uninterrupted run
    ia, ib = load_index(full.out_dir / "influence"), load_index(resumed.out_dir / "influence")
    assert all((ia.tensors[k] == ib.tensors[k]).all() for k in ia.tensors)
    # the epochs' starting weights survive the interruption (epoch 2 started before the checkpoint resumed from)
    assert set(ia.checkpoint_adapters()) == set(ib.checkpoint_adapters()) == {"epoch_1", "epoch_2", "epoch_3"}
    for name, path in ia.checkpoint_adapters().items():
        wa, wb = load_file(str(path / "adapter_model.safetensors")), _weights(ib.checkpoint_adapters()[name])
        assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_early_stopping_keeps_the_best_weights(people: World, tiny_model: Path, tmp_path: Path):
    cfg = make_config(
        tiny_model, tmp_path / "out", data={"eval_fraction": 0.25}, train={"epochs": 30, "lr": 0.3},
        eval={"every_steps": 1, "early_stopping_patience": 2}, influence={"enabled": False},
    )  # fmt: skip
    result = service.train(people.settings, people.ledger, people.dev, cfg)
    metrics = result.manifest.metrics
    assert metrics.stopped_early and metrics.steps < 90
    assert abs(metrics.eval_loss - metrics.best_eval_loss) < 1e-5
    assert result.manifest.influence is None  # no index: written as {} as before
    assert json.loads((result.out_dir / "manifest.json").read_text())["influence"] == {}


def test_adapter_config_is_stable_across_target_orders(tmp_path: Path) -> None:
    texts = []
    for order in (["v_proj", "q_proj", "down_proj"], ["down_proj", "v_proj", "q_proj"]):
        d = tmp_path / "-".join(order)
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"r": 8, "target_modules": order}, indent=2))
        stabilise_adapter_config(d)
        texts.append((d / "adapter_config.json").read_text())
    assert texts[0] == texts[1] and json.loads(texts[0])["target_modules"] == ["down_proj", "q_proj", "v_proj"]
