"""Base-model provisioning (`tally models pull`), resolution and loading.

Imports only `tally.config` from the project; see docs/models.md for the decisions.
"""

from typing import TYPE_CHECKING, Any

from tally.models.errors import (
    ChecksumMismatchError,
    ModelError,
    ModelNotPulledError,
    ModelPullError,
    UnknownModelError,
)
from tally.models.manifest import MANIFEST_NAME
from tally.models.provision import STAGES, ProgressCallback, PullEvent, PullResult, Stage, model_path, pull
from tally.models.registry import REGISTRY, ModelSource, get_source, known_names
from tally.models.resolve import ModelStatus, is_model_dir, list_models, resolve_model

if TYPE_CHECKING:
    from tally.models.load import load_model, load_tokenizer


def __getattr__(name: str) -> Any:
    """`load_model`/`load_tokenizer` on first use: they need torch, which listing or resolving models does not."""
    if name in {"load_model", "load_tokenizer"}:
        from tally.models import load

        return getattr(load, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MANIFEST_NAME",
    "REGISTRY",
    "STAGES",
    "ChecksumMismatchError",
    "ModelError",
    "ModelNotPulledError",
    "ModelPullError",
    "ModelSource",
    "ModelStatus",
    "ProgressCallback",
    "PullEvent",
    "PullResult",
    "Stage",
    "UnknownModelError",
    "get_source",
    "is_model_dir",
    "known_names",
    "list_models",
    "load_model",
    "load_tokenizer",
    "model_path",
    "pull",
    "resolve_model",
]
