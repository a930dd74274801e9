"""Errors the engine raises on purpose; each has a kind from the one taxonomy (`tally.config.errors`)."""

from __future__ import annotations

from tally.config.errors import TallyError


class EngineError(TallyError):
    """Base class: a known, explainable failure."""


class AdapterNotFoundError(EngineError):
    """A `model` name that is neither the base model nor a registered adapter (never a silent fallback)."""

    kind = "not_found"


class AdapterValidationError(EngineError):
    """An adapter directory that cannot be served: the message names the adapter and, where it applies, the tensor."""


class RequestValidationError(EngineError):
    """A request the engine cannot run as asked (too long, bad sampling values)."""


class EngineClosedError(EngineError):
    """The engine was stopped; no new requests are taken."""

    kind = "unavailable"


class EngineBusyError(EngineError):
    """The waiting queue is full (`max_waiting`): refused at once, so a client retries instead of hanging."""

    kind = "unavailable"
