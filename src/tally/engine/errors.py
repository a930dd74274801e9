"""Errors the engine raises on purpose; the API maps each to a 4xx/5xx in the OpenAI error shape."""

from __future__ import annotations


class EngineError(Exception):
    """Base class: a known, explainable failure."""


class AdapterNotFoundError(EngineError):
    """A `model` name that is neither the base model nor a registered adapter (never a silent fallback)."""


class AdapterValidationError(EngineError):
    """An adapter directory that cannot be served: the message names the adapter and, where it applies, the tensor."""


class RequestValidationError(EngineError):
    """A request the engine cannot run as asked (too long, bad sampling values)."""


class EngineClosedError(EngineError):
    """The engine was stopped; no new requests are taken."""
