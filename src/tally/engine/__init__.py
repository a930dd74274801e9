"""Multi-adapter inference: one base model, thousands of LoRA adapters, mixed in every batch.

Imports only `tally.models` and `tally.config` from the project. See docs/engine.md. Names are loaded on first use,
so `tally.engine.registry` (used by the CLI) does not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tally.config.lazy import lazy_exports

if TYPE_CHECKING:
    from tally.engine.engine import Engine, EngineConfig, GenerationResult, adapter_registry_path, build_engine
    from tally.engine.errors import (
        AdapterNotFoundError,
        AdapterValidationError,
        EngineBusyError,
        EngineClosedError,
        EngineError,
        RequestValidationError,
    )
    from tally.engine.sampling import SamplingParams
    from tally.engine.sequence import RequestOutput, Usage

_WHERE = {
    "Engine": "engine",
    "EngineConfig": "engine",
    "GenerationResult": "engine",
    "adapter_registry_path": "engine",
    "build_engine": "engine",
    "AdapterNotFoundError": "errors",
    "AdapterValidationError": "errors",
    "EngineBusyError": "errors",
    "EngineClosedError": "errors",
    "EngineError": "errors",
    "RequestValidationError": "errors",
    "SamplingParams": "sampling",
    "RequestOutput": "sequence",
    "Usage": "sequence",
}


__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "AdapterNotFoundError",
    "AdapterValidationError",
    "Engine",
    "EngineBusyError",
    "EngineClosedError",
    "EngineConfig",
    "EngineError",
    "GenerationResult",
    "RequestOutput",
    "RequestValidationError",
    "SamplingParams",
    "Usage",
    "adapter_registry_path",
    "build_engine",
]
