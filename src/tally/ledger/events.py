"""Typed ledger events and the entry envelope.

An event type is a pydantic model with a dotted `event_type` and a `schema_version`. The hashed bytes of an
entry are the canonical JSON of
    {"actor", "payload", "seq", "ts", "type", "v"}
so the sequence number and timestamp are inside what the Merkle leaf commits to.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from tally.ledger.canonical import canonical_json, json_string

_REGISTRY: dict[tuple[str, int], type[Event]] = {}


class LedgerFormatError(ValueError):
    """Stored or supplied entry bytes are not a valid ledger entry."""


class Event(BaseModel):
    """Base of every ledger event. Subclasses set `event_type` and `schema_version`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_type: ClassVar[str] = ""
    schema_version: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.event_type:
            return
        key = (cls.event_type, cls.schema_version)
        existing = _REGISTRY.get(key)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise TypeError(f"event type {key} is already defined by {existing.__module__}.{existing.__qualname__}")
        _REGISTRY[key] = cls


def event_class(event_type: str, version: int) -> type[Event] | None:
    return _REGISTRY.get((event_type, version))


def registered_types() -> list[tuple[str, int]]:
    return sorted(_REGISTRY)


class LogCreated(Event):
    """The first entry of every log: which origin it serves and which key signs its checkpoints."""

    event_type: ClassVar[str] = "ledger.created"
    origin: str
    verifier_key: str


class Entry(BaseModel):
    """One decoded ledger entry."""

    model_config = ConfigDict(frozen=True)

    seq: int
    ts: str
    type: str
    v: int
    actor: str
    payload: dict[str, Any]

    def event(self) -> Event | None:
        """The payload as its typed event, or None when this installation does not know the type."""
        cls = event_class(self.type, self.v)
        return cls.model_validate(self.payload) if cls else None


def now_ts() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_entry(seq: int, ts: str, actor: str, event: Event) -> bytes:
    """Canonical bytes of one entry. The envelope's keys are fixed and already in canonical order, so only the
    payload goes through the canonical encoder."""
    if not event.event_type:
        raise TypeError(f"{type(event).__name__} has no event_type")
    payload = canonical_json(event.model_dump(mode="json")).decode("utf-8")
    return (
        f'{{"actor":{json_string(actor)},"payload":{payload},"seq":{seq},"ts":"{ts}",'
        f'"type":{json_string(event.event_type)},"v":{event.schema_version}}}'
    ).encode()


def decode_entry(body: bytes) -> Entry:
    """Parse entry bytes; they must be canonical (re-encoding gives the same bytes) and well-typed."""
    try:
        raw = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LedgerFormatError(f"entry is not valid UTF-8 JSON: {exc}") from exc
    try:
        entry = Entry.model_validate(raw)
    except ValidationError as exc:
        raise LedgerFormatError(f"entry envelope is malformed: {exc.errors()[0]['msg']}") from exc
    if set(raw) != {"actor", "payload", "seq", "ts", "type", "v"}:
        raise LedgerFormatError(f"entry has unexpected fields {sorted(set(raw))}")
    if canonical_json(raw) != body:
        raise LedgerFormatError("entry bytes are not canonical JSON")
    cls = event_class(entry.type, entry.v)
    if cls is not None:
        try:
            cls.model_validate(entry.payload)
        except ValidationError as exc:
            raise LedgerFormatError(f"payload does not match {entry.type} v{entry.v}: {exc}") from exc
    return entry
