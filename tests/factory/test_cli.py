"""The factory CLI as a user drives it: train (and resume), eval, leaderboard, publish, pipeline status."""

from __future__ import annotations

import json
from pathlib import Path

import typer
import yaml
from tests.datanets.conftest import World
from typer.testing import CliRunner

from tally.cli import factory

app = typer.Typer()
app.command("train")(factory.train_cmd)
app.command("eval")(factory.eval_cmd)
app.command("leaderboard")(factory.leaderboard_cmd)
app.command("publish")(factory.publish_cmd)
app.add_typer(factory.pipeline_app, name="pipeline")
runner = CliRunner()


def run(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), env={"COLUMNS": "200"})
    assert result.exit_code == code, f"{args}\n{result.output}\n{result.exception!r}"
    return result.output


def test_train_eval_leaderboard_publish(people: World, tiny_model: Path, tmp_path: Path) -> None:
    config = {
        "model": {"name": str(tiny_model)},
        "method": {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": "people", "snapshot": "v1"}], "max_length": 64},
        "train": {"epochs": 1, "batch_size": 4},
        "influence": {"dims": 16},
        "output": {"name": "people-cli", "dir": str(tmp_path / "out")},
    }
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    out = run("train", str(path), "--as", "dev")
    assert "adapter people-cli" in out and "ledger entry" in out
    # a finished adapter is final: neither a resume nor a new run writes into its directory again
    assert "never overwritten" in run("train", str(path), "--resume", "--as", "dev", code=5)
    out = run("eval", "--data", "people", "--adapter", "people-cli", "--model", str(tiny_model), "--max-new-tokens",
              "4", "--as", "dev")  # fmt: skip
    assert "people-c" in out and "exact" in out
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Evaluation" in card and "exact_match" in card  # the card lists recorded evaluations
    listed = json.loads((tmp_path / "out" / "evaluations.json").read_text())  # and so does the file attribution reads
    assert [e["datanet"] for e in listed["evaluations"]] == ["people"]
    board = run("leaderboard", "people", "--metric", "loss", "--as", "dev")
    assert "people-cli" in board and str(tiny_model)[:20] in board
    assert "published people-live" in run("publish", "people-cli", "--name", "people-live", "--as", "dev")
    assert "people-live" in json.loads((people.settings.data_dir / "adapters.json").read_text())["adapters"]


def test_refusals_and_bad_configs_are_one_line_errors(people: World, tiny_model: Path, tmp_path: Path) -> None:
    people.create("rag-only", policy="open", uses=["rag"])
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump({"data": {"datanets": [{"datanet": "rag-only"}]}, "output": {"name": "x"},
                                    "model": {"name": str(tiny_model)}}))  # fmt: skip
    assert "does not permit use 'train'" in run("train", str(path), "--as", "dev", code=3)  # forbidden: exit 3
    path.write_text(yaml.safe_dump({"data": {"datanets": [{"datanet": "people"}]}, "output": {"name": "x"},
                                    "train": {"lr": -1}}))  # fmt: skip
    assert "train.lr" in run("train", str(path), "--as", "dev", code=1)
    assert "no pipeline file" in run("pipeline", "run", str(tmp_path / "missing.yaml"), "--as", "dev", code=1)
    run("pipeline", "status")
