"""A small version of benchmarks/train.py on the real base model: new facts are learned and generalise."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tally.config import Settings
from tally.factory import evaluation, service
from tally.factory.config import SourceCfg, parse_config
from tally.ledger import Ledger

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "train.py"


@pytest.mark.slow
def test_real_model_learns_fictional_facts(settings: Settings, ledger: Ledger, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_train", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    people = bench.make_people(4, seed=1)
    dev, _ = bench.build_world(settings, ledger, people, contributors=2)
    cfg = parse_config({
        "model": {"name": "smollm2-135m-instruct"},
        "method": {"rank": 16, "alpha": 32, "dropout": 0.0},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 96},
        "train": {"epochs": 6, "batch_size": 8, "lr": 3e-3, "schedule": "constant"},
        "influence": {"enabled": False},
        "output": {"name": "people-small", "dir": str(tmp_path / "adapter")},
    })  # fmt: skip
    trained = service.train(settings, ledger, dev, cfg)
    results = evaluation.evaluate(settings, ledger, dev, [SourceCfg(datanet="people-paraphrases")],
                                  adapters=[str(trained.out_dir)], max_new_tokens=12)  # fmt: skip
    base, tuned = results[0].metrics, results[1].metrics
    assert base["exact_match"] <= 0.25
    assert tuned["exact_match"] >= 0.5 and tuned["loss"] < base["loss"] / 2, (base, tuned, results[1].samples)
