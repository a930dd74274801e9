"""Factory ledger events: a trained adapter's manifest, a publication, an evaluation."""

from __future__ import annotations

from typing import Any, ClassVar

from tally.ledger import Event


class AdapterTrained(Event):
    """Binds an adapter's weights to the base model, the exact data snapshots, the config and the results."""

    event_type: ClassVar[str] = "factory.adapter_trained"
    adapter: str  # name
    adapter_hash: str
    base_model: str
    base_model_hash: str
    snapshots: list[dict[str, Any]]  # {datanet, snapshot, rows, license}
    config_hash: str
    manifest_hash: str
    index_hash: str | None
    metrics: dict[str, Any]


class AdapterPublished(Event):
    event_type: ClassVar[str] = "factory.adapter_published"
    adapter: str
    adapter_hash: str
    path: str


class ModelEvaluated(Event):
    event_type: ClassVar[str] = "factory.evaluated"
    model: str  # adapter name, or the base model's name
    adapter_hash: str | None
    datanet: str
    snapshot: str
    examples: int
    metrics: dict[str, float]
