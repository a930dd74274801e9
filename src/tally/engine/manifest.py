"""What the factory writes beside an adapter's weights and attribution reads: the manifest and the evaluations.

Both files sit in the adapter's PEFT directory, whose layout the engine owns (`tally.engine.files`). They are typed
here because the factory writes them and attribution reads them, and neither of those may import the other; the
engine itself never reads them.

- `manifest.json` binds the adapter's bytes to the base model, the data snapshots, the config and the results. Its
  SHA-256 is in the ledger (`factory.adapter_trained`), so it is written once, never rewritten, and its JSON shape
  stays as it is: a field may be added (optional), none renamed or removed, so old manifests keep loading.
- `evaluations.json` lists the recorded evaluations of the adapter's exact weights (each is also a
  `factory.evaluated` ledger entry). The factory rewrites it after every evaluation; attribution credits the
  contributors of the evaluated datanets from it.

Reading either file checks it: a file that does not fit raises an AdapterValidationError naming the file and field.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
)

from tally.config.yaml_errors import validation_message
from tally.engine.errors import AdapterValidationError

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT: Final = "tally.factory.manifest/1"
EVALUATIONS_NAME = "evaluations.json"


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterRef(_Part):
    name: str
    hash: str  # the engine's adapter id: tally.engine.files.hash_adapter
    peft: str = "LORA"


class BaseModelRef(_Part):
    name: str
    hash: str


class SnapshotUse(_Part):
    datanet: str
    snapshot: str  # the snapshot's Merkle root
    version: int
    rows: int  # rows of this snapshot used
    license: str


class TrainingData(_Part):
    snapshots: list[SnapshotUse]
    contributors: dict[str, int]  # address -> rows used
    train_rows: int
    eval_rows: int


class TrainMetrics(_Part):
    train_loss: float | None
    eval_loss: float | None
    best_eval_loss: float | None
    steps: int
    tokens: int
    train_seconds: float
    stopped_early: bool


class InfluenceSummary(_Part):
    """The training-data index written beside the adapter (`influence/`)."""

    hash: str | None
    dims: int
    checkpoints: list[str]
    final_pass_seconds: float
    bytes: int


class PipelineRef(_Part):
    """The pipeline step that trained the adapter; its author may be credited."""

    name: str
    step: str
    author: str


class AdapterManifest(_Part):
    format: Literal["tally.factory.manifest/1"] = MANIFEST_FORMAT
    adapter: AdapterRef
    base_model: BaseModelRef
    data: TrainingData
    config: dict[str, Any]  # the full training config, defaults included (the factory's TrainConfig)
    config_hash: str
    metrics: TrainMetrics
    influence: InfluenceSummary | None  # written as {} when no index was built
    trained_by: str  # the developer's address
    pipeline: PipelineRef | None = None  # left out of the file when the adapter was not trained by a pipeline

    @field_validator("influence", mode="before")
    @classmethod
    def _no_index(cls, value: object) -> object:
        return None if value == {} else value

    @model_serializer(mode="wrap")
    def _as_written(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("influence") is None:
            data["influence"] = {}
        if data.get("pipeline") is None:
            data.pop("pipeline", None)
        return data


class Evaluation(_Part):
    datanet: str
    snapshot: str
    examples: int
    metrics: dict[str, float]
    ledger_seq: int  # the `factory.evaluated` entry


class AdapterEvaluations(_Part):
    adapter_hash: str  # the weights evaluated: a directory retrained in place does not inherit them
    evaluations: list[Evaluation]


def _read(path: Path, model: type[_Part]) -> Any:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterValidationError(f"{path} is not JSON: {exc}", path=str(path)) from None
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise AdapterValidationError(validation_message(str(path), exc), path=str(path)) from None


def read_adapter_manifest(directory: Path) -> AdapterManifest | None:
    """The adapter's manifest, or None for an adapter without one (trained elsewhere)."""
    path = directory / MANIFEST_NAME
    return _read(path, AdapterManifest) if path.is_file() else None


def manifest_text(manifest: AdapterManifest) -> str:
    """The manifest as written: canonical JSON (sorted keys), one space of indent, a final newline."""
    return json.dumps(manifest.model_dump(mode="json"), sort_keys=True, indent=1, ensure_ascii=False) + "\n"


def read_evaluations(directory: Path, adapter_hash: str) -> list[Evaluation]:
    """The recorded evaluations of the weights `adapter_hash` in `directory`; none when the file is missing or lists
    other weights."""
    path = directory / EVALUATIONS_NAME
    if not path.is_file():
        return []
    found: AdapterEvaluations = _read(path, AdapterEvaluations)
    return list(found.evaluations) if found.adapter_hash == adapter_hash else []


def write_evaluations(directory: Path, evaluations: AdapterEvaluations) -> None:
    """Replace the evaluations file whole (a temporary file renamed over it), so a reader never sees half of one."""
    path = directory / EVALUATIONS_NAME
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(evaluations.model_dump(mode="json"), sort_keys=True, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
