"""The adapter manifest and evaluations files: the typed contract the factory writes and attribution reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tally.engine.errors import AdapterValidationError
from tally.engine.manifest import (
    EVALUATIONS_NAME,
    MANIFEST_NAME,
    AdapterEvaluations,
    Evaluation,
    manifest_text,
    read_adapter_manifest,
    read_evaluations,
    write_evaluations,
)

# A manifest exactly as the factory wrote it before the manifest was typed (no index, no pipeline).
WRITTEN_BEFORE = """{
 "adapter": {
  "hash": "5f1c",
  "name": "people-lora",
  "peft": "LORA"
 },
 "base_model": {
  "hash": "9ab0",
  "name": "tiny"
 },
 "config": {
  "method": {
   "rank": 2
  },
  "train": {
   "lr": 0.001
  }
 },
 "config_hash": "c0ff",
 "data": {
  "contributors": {
   "0x00000000000000000000000000000000000000A1": 4,
   "0x00000000000000000000000000000000000000b2": 4
  },
  "eval_rows": 2,
  "snapshots": [
   {
    "datanet": "people",
    "license": "CC-BY-4.0",
    "rows": 8,
    "snapshot": "7d1e",
    "version": 1
   }
  ],
  "train_rows": 6
 },
 "format": "tally.factory.manifest/1",
 "influence": {},
 "metrics": {
  "best_eval_loss": null,
  "eval_loss": 2.5,
  "steps": 3,
  "stopped_early": false,
  "tokens": 120,
  "train_loss": 2.75,
  "train_seconds": 0.5
 },
 "trained_by": "0x00000000000000000000000000000000000000A1"
}
"""


def _write(directory: Path, data: object) -> None:
    (directory / MANIFEST_NAME).write_text(json.dumps(data), encoding="utf-8")


def test_an_old_manifest_loads_and_writes_back_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text(WRITTEN_BEFORE, encoding="utf-8")
    manifest = read_adapter_manifest(tmp_path)
    assert manifest is not None and manifest.influence is None and manifest.pipeline is None
    assert manifest.trained_by.endswith("A1") and manifest.data.snapshots[0].rows == 8
    assert manifest_text(manifest) == WRITTEN_BEFORE  # the hash in the ledger still matches

    raw = json.loads(WRITTEN_BEFORE)
    raw["influence"] = {"hash": "e1", "dims": 64, "checkpoints": ["final"], "final_pass_seconds": 0.25, "bytes": 9}
    raw["pipeline"] = {"name": "people", "step": "train", "author": "0x00000000000000000000000000000000000000c3"}
    text = json.dumps(raw, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    (tmp_path / MANIFEST_NAME).write_text(text, encoding="utf-8")
    manifest = read_adapter_manifest(tmp_path)
    assert manifest is not None and manifest.influence is not None and manifest.influence.dims == 64
    assert manifest.pipeline is not None and manifest.pipeline.step == "train"
    assert manifest_text(manifest) == text


def test_no_manifest_is_an_adapter_trained_elsewhere(tmp_path: Path) -> None:
    assert read_adapter_manifest(tmp_path) is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda m: m["metrics"].update(steps="three"), "field metrics.steps: Input should be a valid integer"),
        (lambda m: m.pop("trained_by"), "field trained_by: Field required"),
        (lambda m: m["data"]["snapshots"][0].update(rowz=8), "field data.snapshots.0.rowz: unknown field"),
        (lambda m: m.update(format="tally.factory.manifest/9"), "field format:"),
    ],
)
def test_an_invalid_manifest_names_the_file_and_the_field(tmp_path: Path, change, field: str) -> None:
    raw = json.loads(WRITTEN_BEFORE)
    change(raw)
    _write(tmp_path, raw)
    with pytest.raises(AdapterValidationError) as caught:
        read_adapter_manifest(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / MANIFEST_NAME}: {field}")


def test_a_manifest_that_is_not_json_says_so(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("{not json", encoding="utf-8")
    with pytest.raises(AdapterValidationError, match="manifest.json is not JSON"):
        read_adapter_manifest(tmp_path)


def test_evaluations_belong_to_the_weights_they_name(tmp_path: Path) -> None:
    assert read_evaluations(tmp_path, "5f1c") == []
    done = Evaluation(datanet="people", snapshot="7d1e", examples=8, metrics={"loss": 2.5}, ledger_seq=12)
    write_evaluations(tmp_path, AdapterEvaluations(adapter_hash="5f1c", evaluations=[done]))
    assert read_evaluations(tmp_path, "5f1c") == [done]
    assert read_evaluations(tmp_path, "other-weights") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == [EVALUATIONS_NAME]  # replaced whole: no temporary left

    (tmp_path / EVALUATIONS_NAME).write_text(json.dumps({"adapter_hash": "5f1c", "evaluations": [{"datanet": 1}]}))
    with pytest.raises(AdapterValidationError, match=r"evaluations.json: field evaluations.0.datanet"):
        read_evaluations(tmp_path, "5f1c")
