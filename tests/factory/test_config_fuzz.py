"""Training configs and pipeline files from strangers: parsed, or refused as a FactoryError naming the field, never
another exception."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tally.factory.config import parse_config
from tally.factory.errors import FactoryError
from tally.factory.pipeline_spec import load_pipeline

SCALAR = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
KEYS = ["model", "method", "data", "train", "influence", "output", "eval", "name", "rank", "epochs", "datanets"]
SECTION = st.dictionaries(st.sampled_from([*KEYS, "lr", "seed", "dims", "dir", "batch_size"]), VALUE, max_size=4)
CONFIG = st.dictionaries(st.sampled_from(KEYS), SECTION | VALUE, max_size=6)


@examples(max_examples=300, deadline=None)
@given(CONFIG)
def test_any_training_config(raw: dict[str, Any]) -> None:
    try:
        parse_config(raw)
    except FactoryError as exc:
        assert exc.message


@examples(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=300) | CONFIG.map(yaml.safe_dump))
def test_any_pipeline_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_pipeline(path)
    except FactoryError as exc:
        assert exc.message
