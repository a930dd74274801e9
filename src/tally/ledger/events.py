"""Typed ledger events and the entry envelope.

An event type is a pydantic model with a dotted `event_type` and a `schema_version`. The hashed bytes of an
entry are the canonical JSON of
    {"actor", "payload", "seq", "ts", "type", "v"}
so the sequence number and timestamp are inside what the Merkle leaf commits to.
"""

from __future__ import annotations

import json
import types
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, ClassVar, NamedTuple, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError

from tally.config.errors import TallyError
from tally.ledger.canonical import MAX_SAFE_INT, canonical_json, canonical_json_checked

_REGISTRY: dict[tuple[str, int], type[Event]] = {}


class LedgerFormatError(TallyError, ValueError):
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
    """Canonical bytes of one entry."""
    return next(encode_entries(seq, ts, [(event, actor)]))


def encode_entries(start: int, ts: str, items: Iterable[tuple[Event, str]]) -> Iterator[bytes]:
    """Canonical bytes of entries start, start + 1, ... (one event and actor each), all stamped `ts`.

    A flat event (strings, integers, booleans) is encoded straight from its field values, which are already its
    JSON form; any other event goes through `model_dump` and the checked canonical encoder. A generator, so a
    caller that copies each entry where it keeps it (as bundles do) lets the encoder's buffer be reused at once:
    keeping 10^4 fresh encoder outputs alive costs more in page faults than encoding them."""
    specs, dumps = _SPECS, canonical_json_checked
    for seq, (event, actor) in enumerate(items, start):
        if type(actor) is not str:
            raise TypeError(f"a ledger entry's actor must be a string, not {type(actor).__name__}")
        event_type, version, int_fields = specs.get(type(event)) or _spec(type(event))
        values = event.__dict__
        flat = int_fields is not None
        if int_fields:
            for name in int_fields:
                x = values[name]
                if x is not None and (x > MAX_SAFE_INT or x < -MAX_SAFE_INT):
                    flat = False
        if flat:
            yield dumps({"actor": actor, "payload": values, "seq": seq, "ts": ts, "type": event_type, "v": version})
        else:
            payload = event.model_dump(mode="json")
            yield canonical_json(
                {"actor": actor, "payload": payload, "seq": seq, "ts": ts, "type": event_type, "v": version}
            )


class _Spec(NamedTuple):
    type: str
    v: int
    int_fields: tuple[str, ...] | None  # None: not a flat event


_SPECS: dict[type[Event], _Spec] = {}


def _spec(cls: type[Event]) -> _Spec:
    if not cls.event_type:
        raise TypeError(f"{cls.__name__} has no event_type")
    _SPECS[cls] = _Spec(cls.event_type, cls.schema_version, _plain_int_fields(cls))
    return _SPECS[cls]


def _plain_int_fields(cls: type[Event]) -> tuple[str, ...] | None:
    """For an event whose fields are each exactly str, int or bool (optionally None), with no alias, exclusion,
    serializer, computed field or other metadata, the names of its integer fields; None for any other event."""
    decorators = cls.__pydantic_decorators__
    if cls.model_computed_fields or decorators.field_serializers or decorators.model_serializers:
        return None
    ints = []
    for name, field in cls.model_fields.items():
        annotation = field.annotation
        options = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
        kinds = [t for t in options if t is not type(None)]
        changed = field.alias or field.serialization_alias or field.exclude or getattr(field, "exclude_if", None)
        if not name.isascii() or changed or field.metadata or len(kinds) != 1 or kinds[0] not in (str, int, bool):
            return None
        if kinds[0] is not str:
            ints.append(name)
    return tuple(ints)


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
