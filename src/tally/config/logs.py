"""Logging: the standard `logging` module, a request id on every line, text for people or JSON for machines.

The API sets the request id for the duration of a request (a context variable, so concurrent requests on one
event loop and the worker threads they start keep their own); library code just logs.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, Literal

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("tally_request_id", default="-")
_RESERVED = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "request_id"}


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request id, message, the `extra` fields, the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str = "INFO", fmt: Literal["text", "json"] = "text") -> None:
    """Install one stderr handler on the `tally` logger (called once by `tally serve` and the CLI's entry)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger("tally")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


REQUEST_FIELDS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "tally_request_fields", default=None
)


def note(**fields: Any) -> None:
    """Add fields to the current request's log line (model, tokens, ...); nothing outside a request."""
    current = REQUEST_FIELDS.get()
    if current is not None:
        current.update(fields)


__all__ = ["REQUEST_FIELDS", "REQUEST_ID", "TEXT_FORMAT", "JsonFormatter", "configure_logging", "note"]
