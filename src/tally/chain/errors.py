"""Chain errors, each with a kind from the one taxonomy (`tally.config.errors`)."""

from __future__ import annotations

from typing import ClassVar

from tally.config.errors import ErrorKind, TallyError


class ChainError(TallyError):
    """The chain cannot do what was asked: not configured or unreachable (unavailable), a transaction reverted or
    the chain disagrees with the local state (conflict), or the operator's key or contracts are missing."""

    kind: ClassVar[ErrorKind] = "unavailable"


class ChainDivergence(ChainError):
    """The chain and the local log disagree: an anchored root is not the local root at that size."""

    kind: ClassVar[ErrorKind] = "conflict"
