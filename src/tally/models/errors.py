"""Errors the models package raises on purpose, each with a kind from the one taxonomy (`tally.config.errors`)."""

from __future__ import annotations

from tally.config.errors import TallyError


class ModelError(TallyError):
    """Base class: a known, explainable failure (bad name, missing model, failed pull)."""


class UnknownModelError(ModelError):
    """A name that is neither a known base model nor a local model directory."""

    kind = "not_found"


class ModelNotPulledError(ModelError):
    """A known base model whose converted copy is not (completely) in the cache: pull it, then retry."""

    kind = "unavailable"


class ModelPullError(ModelError):
    """Provisioning failed: pip could not download, the wheel did not verify, or conversion failed. The package
    index or the network is what failed, so a retry (or another index) may succeed."""

    kind = "unavailable"


class ChecksumMismatchError(ModelPullError):
    """The downloaded wheel is not the file the registry pins (deleted again; a retry may get the right one)."""
