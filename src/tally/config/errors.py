"""The one error taxonomy: every package raises a `TallyError` whose `kind` says whose fault it is.

The HTTP layer maps a kind to a status and an OpenAI error type once (`tally.api.errors`); the CLI maps it to a
message and an exit code once (`tally.cli.common`). Nothing classifies an error by its message text. An error
carries the values that explain it (`values`), and `param` names the request field at fault when there is one.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

ErrorKind = Literal[
    "invalid", "unauthenticated", "forbidden", "not_found", "conflict", "limit", "unavailable", "internal"
]
ERROR_KINDS: tuple[ErrorKind, ...] = (
    "invalid",  # the input is wrong: fix the request, file or flag
    "unauthenticated",  # no key, or a key that is unknown, expired or revoked
    "forbidden",  # a valid key without the right to do this
    "not_found",  # the named thing does not exist (or is not visible to the caller)
    "conflict",  # the state forbids it now (already exists, already settled, ...)
    "limit",  # a configured size, count or rate was exceeded
    "unavailable",  # a part the request needs is not running or not ready (retry later or start it)
    "internal",  # the server's own configuration or code is at fault
)


class TallyError(Exception):
    """Base of every error a package raises for a caller to see; subclasses set `kind` (or pass `kind=`)."""

    kind: ClassVar[ErrorKind] = "invalid"

    def __init__(self, message: str = "", *, kind: ErrorKind | None = None, param: str | None = None, **values: Any):
        super().__init__(message)
        if kind is not None:
            if kind not in ERROR_KINDS:
                raise ValueError(f"error kind {kind!r} is not one of {', '.join(ERROR_KINDS)}")
            self.kind = kind  # type: ignore[misc]  # an instance may narrow its class's kind
        self.param = param
        self.values = values

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


__all__ = ["ERROR_KINDS", "ErrorKind", "TallyError"]
