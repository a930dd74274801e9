"""A bad training config names its file, the line and field, and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from tally.factory.config import load_config
from tally.factory.errors import FactoryError


def test_a_bad_field_is_named_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  name: smollm2-135m-instruct\nmethod:\n  rank: sixteen\ndata:\n  datanets: []\n")
    with pytest.raises(FactoryError, match=r"train.yaml line 4: field method.rank: Input should be a valid integer"):
        load_config(path)


def test_a_missing_section_is_reported_at_the_top(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  name: x\n")
    with pytest.raises(FactoryError, match=r"train.yaml line 1: field data: Field required"):
        load_config(path)


def test_an_unknown_index_precision_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data:\n  datanets: [{datanet: people}]\noutput:\n  name: a\ninfluence:\n  precision: fp16\n")
    with pytest.raises(FactoryError, match=r"train.yaml line 6: field influence.precision: Input should be 'auto'"):
        load_config(path)
