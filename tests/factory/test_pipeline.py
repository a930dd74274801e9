"""Pipelines: cached by input hash, exactly the dependent steps re-run on a new snapshot, gates, retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tests.datanets.conftest import World
from tests.factory.conftest import PEOPLE, people_rows

from tally.datanets import snapshots
from tally.factory import steps
from tally.factory.errors import FactoryError
from tally.factory.pipeline import pipeline_status, run_pipeline, watch
from tally.factory.pipeline_spec import load_pipeline

TRAIN = {
    "method": {"rank": 2, "alpha": 4, "dropout": 0.0, "targets": ["q_proj", "v_proj"]},
    "data": {"max_length": 64},
    "train": {"epochs": 1, "batch_size": 4, "lr": 1e-2},
    "influence": {"dims": 16},
}


def _pipeline(tmp_path: Path, tiny_model: Path, gate: str = ">= 0.0") -> Path:
    (tmp_path / "train.yaml").write_text(yaml.safe_dump({**TRAIN, "model": {"name": str(tiny_model)}}))
    spec = {
        "name": "people",
        "steps": {
            "snap_a": {"kind": "snapshot", "datanet": "people"},
            "snap_b": {"kind": "snapshot", "datanet": "places"},
            "train_a": {"kind": "train", "needs": ["snap_a"], "config": "train.yaml"},
            "train_b": {"kind": "train", "needs": ["snap_b"], "config": "train.yaml"},
            "gate_a": {"kind": "gate", "needs": ["eval_a"], "require": {"contains": gate}},
            "eval_a": {"kind": "eval", "needs": ["train_a", "snap_a"]},
            "publish_a": {"kind": "publish", "needs": ["gate_a", "train_a"], "name": "people-live"},
            "deploy_a": {"kind": "deploy", "needs": ["publish_a"]},
        },
    }
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture
def two_datanets(people: World) -> World:
    people.create("places", policy="open")
    people.upload(people.alice, "places", people_rows([("Oskar Drass", "Ulmsby", "beekeeper")]))
    with people.tx() as s:
        snapshots.create_snapshot(s, people.ledger, people.owner, "places")
    return people


def test_unchanged_inputs_run_nothing_and_a_new_snapshot_runs_exactly_its_dependents(
    two_datanets: World, tiny_model: Path, tmp_path: Path
) -> None:
    w = two_datanets
    spec, base = load_pipeline(_pipeline(tmp_path, tiny_model))
    first = run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert first["status"] == "succeeded", first
    assert set(first["steps"].values()) == {"succeeded"}
    assert (w.settings.data_dir / "adapters.json").is_file()
    manifest = json.loads((Path(first["outputs"]["train_a"]["path"]) / "manifest.json").read_text())
    assert manifest["pipeline"] == {"name": spec.name, "step": "train_a", "author": w.owner.address}

    again = run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert set(again["steps"].values()) == {"cached"}  # nothing ran
    assert again["outputs"]["train_a"] == first["outputs"]["train_a"]

    w.upload(w.bob, "people", people_rows([("Mirel Vesk", "Marsk", "tanner")]))
    with w.tx() as s:
        snapshots.create_snapshot(s, w.ledger, w.owner, "people")
    runs = watch(w.settings, w.ledger, w.owner, spec, base, interval_s=0, max_checks=2)
    assert len(runs) == 1  # the watcher's first look runs once; unchanged on the second look
    ran = {k for k, v in runs[0]["steps"].items() if v == "succeeded"}
    assert ran == {"snap_a", "train_a", "eval_a", "gate_a", "publish_a", "deploy_a"}
    assert {k for k, v in runs[0]["steps"].items() if v == "cached"} == {"snap_b", "train_b"}
    assert runs[0]["outputs"]["train_a"]["adapter_hash"] != first["outputs"]["train_a"]["adapter_hash"]
    status = pipeline_status(w.ledger, "people")
    assert [r["status"] for r in status] == ["succeeded"] * 3 and status[0]["trigger"] == "watch:start"


def test_a_failed_gate_stops_publication(two_datanets: World, tiny_model: Path, tmp_path: Path) -> None:
    w = two_datanets
    spec, base = load_pipeline(_pipeline(tmp_path, tiny_model, gate=">= 2"))
    result = run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert result["status"] == "failed"
    assert result["steps"]["gate_a"] == "failed"
    assert result["steps"]["publish_a"] == result["steps"]["deploy_a"] == "skipped"
    gate = next(s for s in pipeline_status(w.ledger)[0]["steps"] if s["name"] == "gate_a")
    assert "gate failed: contains" in gate["error"] and gate["attempts"] == 1
    assert not (w.settings.data_dir / "adapters.json").exists()


def test_retries_then_success(two_datanets: World, tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    w = two_datanets
    spec, base = load_pipeline(_pipeline(tmp_path, tiny_model))
    spec.retries = 2
    real, calls = steps.run_step, []

    def flaky(ctx, name, step, input_hash, needs):  # type: ignore[no-untyped-def]
        calls.append(name)
        if name == "snap_b" and calls.count("snap_b") < 3:
            raise OSError("transient")
        return real(ctx, name, step, input_hash, needs)

    monkeypatch.setattr(steps, "run_step", flaky)
    result = run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert result["steps"]["snap_b"] == "succeeded" and calls.count("snap_b") == 3
    snap_b = next(s for s in pipeline_status(w.ledger)[0]["steps"] if s["name"] == "snap_b")
    assert snap_b["attempts"] == 3


def test_bad_pipelines_are_explained(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "steps": {"a": {"kind": "gate", "needs": ["b"], "require": {}}}}))
    with pytest.raises(FactoryError, match="needs 'b'"):
        load_pipeline(path)
    path.write_text(yaml.safe_dump({"name": "x", "steps": {"a": {"kind": "train", "needs": ["a"], "config": {}}}}))
    with pytest.raises(FactoryError, match="cycle"):
        load_pipeline(path)
    _ = PEOPLE
