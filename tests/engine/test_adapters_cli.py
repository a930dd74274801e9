"""`tally adapters add|list|remove` and the engine reading the registry at start."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer
from tests.engine.conftest import TinySetup
from typer.testing import CliRunner

from tally.cli.adapters import app as adapters_app
from tally.config import Settings
from tally.engine.registry import read_registry, registry_path

runner = CliRunner()
cli = typer.Typer()
cli.add_typer(adapters_app, name="adapters")


def test_add_list_remove(settings: Settings, tiny: TinySetup, tmp_path: Path) -> None:
    path = tiny.adapters["ad0-r4"]
    r = runner.invoke(cli, ["adapters", "add", "support-bot", str(path), "--pinned"])
    assert r.exit_code == 0, r.output
    entries = read_registry(registry_path(settings.data_dir))
    assert entries["support-bot"].path == str(path.resolve()) and entries["support-bot"].pinned
    listed = runner.invoke(cli, ["adapters", "list", "--json"])
    assert json.loads(listed.output)[0]["name"] == "support-bot"
    bad = runner.invoke(cli, ["adapters", "add", "broken", str(tmp_path)])
    assert bad.exit_code == 1 and "adapter 'broken'" in bad.output and "adapter_config.json" in bad.output
    assert runner.invoke(cli, ["adapters", "remove", "support-bot"]).exit_code == 0
    missing = runner.invoke(cli, ["adapters", "remove", "support-bot"])
    assert missing.exit_code == 4 and "not registered" in missing.output  # not_found
    assert read_registry(registry_path(settings.data_dir)) == {}


def test_registry_module_does_not_import_torch() -> None:
    code = "import sys, tally.cli.adapters; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_build_engine_reads_the_registry(settings: Settings, tiny: TinySetup, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from tally.engine import EngineConfig, SamplingParams, build_engine
    from tally.engine.registry import add

    add(registry_path(settings.data_dir), "reg", tiny.adapters["ad1-r8"])
    s = settings.model_copy(update={"models": settings.models.model_copy(update={"default": str(tiny.model_dir)})})
    engine = build_engine(s, EngineConfig(max_num_seqs=2, max_model_len=64, adapter_slots=2, device="cpu"))
    assert [e.name for e in engine.adapters()] == ["reg"]
    assert engine.generate([5, 6], SamplingParams(max_tokens=2), model="reg").completion_tokens == 2
