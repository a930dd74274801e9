"""Settings come from tally.toml and TALLY_* variables, environment first; bad values are named."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from tally.config import load_settings


def test_toml_then_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for var in ("TALLY_DATA_DIR", "TALLY_CONFIG", "TALLY_SERVER__PORT", "TALLY_DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "tally.toml").write_text(
        'data_dir = "/srv/tally"\n[server]\nport = 9000\nhost = "0.0.0.0"\n[ledger]\norigin = "example.org/log"\n'
    )
    s = load_settings()
    assert (s.data_dir, s.server.port, s.server.host, s.ledger.origin) == (
        Path("/srv/tally"), 9000, "0.0.0.0", "example.org/log",
    )  # fmt: skip
    assert s.db_url == "sqlite:////srv/tally/tally.db"
    monkeypatch.setenv("TALLY_SERVER__PORT", "9100")
    monkeypatch.setenv("TALLY_DATABASE_URL", "postgresql+psycopg://u@db/tally")
    s = load_settings()
    assert s.server.port == 9100 and s.db_url == "postgresql+psycopg://u@db/tally"


def test_bad_values_name_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TALLY_SERVER__PORT", "99999")
    with pytest.raises(ValidationError, match="server.port"):
        load_settings()
    monkeypatch.delenv("TALLY_SERVER__PORT")
    (tmp_path / "tally.toml").write_text("[ledger]\norgin = 'typo'\n")
    with pytest.raises(ValidationError, match="orgin"):
        load_settings()


def test_a_named_config_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_CONFIG", str(tmp_path / "missing.toml"))
    with pytest.raises(FileNotFoundError, match="missing.toml"):
        load_settings()


def test_attribution_settings_name_only_known_methods(tmp_path, monkeypatch) -> None:
    import pytest
    from pydantic import ValidationError

    from tally.config.settings import AttributionSettings

    with pytest.raises(ValidationError, match="unknown attribution method influence; expected spans"):
        AttributionSettings(weights={"influence": 1.0})
    with pytest.raises(ValidationError, match="unknown attribution method bm25"):
        AttributionSettings(null_gated=["bm25"])
    assert AttributionSettings(weights={"gradient": 2.0}).weights == {"gradient": 2.0}


def test_engine_section_sizes_the_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tally.engine import EngineConfig

    monkeypatch.chdir(tmp_path)
    for var in ("TALLY_CONFIG", "TALLY_ENGINE__THREADS"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "tally.toml").write_text("[engine]\nmax_num_seqs = 32\nmax_model_len = 2048\nthreads = 2\n")
    s = load_settings()
    config = EngineConfig(**s.engine.model_dump())
    assert (config.max_num_seqs, config.max_model_len, config.threads) == (32, 2048, 2)
    assert config.adapter_slots == EngineConfig().adapter_slots  # unset fields keep the engine's defaults
    monkeypatch.setenv("TALLY_ENGINE__THREADS", "1")
    assert load_settings().engine.threads == 1
    (tmp_path / "tally.toml").write_text("[engine]\nmax_num_seqs = -1\n")
    with pytest.raises(ValidationError, match="engine.max_num_seqs"):
        load_settings()
    (tmp_path / "tally.toml").write_text("[engine]\nmax_seqs = 8\n")
    with pytest.raises(ValidationError, match="engine.max_seqs"):
        load_settings()


def test_engine_weights_default_to_auto_and_refuse_other_formats(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    assert settings.engine.weights == "auto"  # int8 where the CPU kernel builds, else fp32 (docs/engine.md)
    with pytest.raises(ValidationError, match="weights"):
        load_settings(data_dir=tmp_path, engine={"weights": "int4"})
