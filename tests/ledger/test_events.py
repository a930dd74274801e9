"""Typed events and canonical entry encoding."""

from __future__ import annotations

import json
from typing import Annotated, ClassVar

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from pydantic import Field, PlainSerializer
from tests.conftest import Note

from tally.ledger import Event, LedgerFormatError, decode_entry
from tally.ledger.canonical import canonical_json
from tally.ledger.events import _plain_int_fields, encode_entry

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)  # fmt: skip


@given(json_values)
def test_canonical_json_matches_rfc8785(value: object) -> None:
    try:
        expected = rfc8785.dumps(value)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - whatever rfc8785 refuses, we refuse too
            canonical_json(value)
        return
    assert canonical_json(value) == expected


@given(st.text(), st.text())
def test_entry_bytes_are_canonical_json(actor: str, text: str) -> None:
    try:
        body = encode_entry(3, "2026-11-26T00:00:00.000000Z", actor, Note(text=text))
    except UnicodeEncodeError:
        return  # lone surrogates cannot be UTF-8
    assert body == rfc8785.dumps(json.loads(body))
    entry = decode_entry(body)
    assert (entry.seq, entry.actor, entry.payload) == (3, actor, {"text": text})


def test_non_canonical_or_malformed_entries_are_rejected() -> None:
    body = encode_entry(1, "2026-11-26T00:00:00.000000Z", "a", Note(text="x"))
    spaced = json.dumps(json.loads(body), indent=1).encode()
    with pytest.raises(LedgerFormatError, match="not canonical"):
        decode_entry(spaced)
    with pytest.raises(LedgerFormatError, match="not valid UTF-8 JSON"):
        decode_entry(b"\xff{")
    wrong = body.replace(b'"text":"x"', b'"text":5')
    with pytest.raises(LedgerFormatError, match="does not match test.note"):
        decode_entry(wrong)


def test_unknown_event_types_still_decode() -> None:
    raw = {"actor": "a", "payload": {"k": 1}, "seq": 0, "ts": "t", "type": "future.thing", "v": 9}
    entry = decode_entry(rfc8785.dumps(raw))
    assert entry.event() is None and entry.payload == {"k": 1}


def test_an_event_type_cannot_be_defined_twice() -> None:
    with pytest.raises(TypeError, match="already defined"):

        class Other(Event):
            event_type: ClassVar[str] = "test.note"
            text: str


class Counts(Event):
    """Flat: encoded straight from its field values."""

    event_type: ClassVar[str] = "test.counts"
    name: str
    count: int
    ok: bool
    note: str | None = None


class Nested(Event):
    """Not flat: goes through model_dump."""

    event_type: ClassVar[str] = "test.nested"
    items: list[str]
    meta: dict[str, int]


def _reference(seq: int, actor: str, event: Event) -> bytes:
    envelope = {"actor": actor, "payload": event.model_dump(mode="json"), "seq": seq, "ts": "t",
                "type": event.event_type, "v": event.schema_version}  # fmt: skip
    return rfc8785.dumps(envelope)


@given(st.text(), st.text(), st.integers(), st.booleans(), st.none() | st.text())
def test_flat_events_encode_exactly_as_the_reference(
    actor: str, name: str, count: int, ok: bool, note: str | None
) -> None:
    event = Counts(name=name, count=count, ok=ok, note=note)
    try:
        expected = _reference(5, actor, event)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - unsafe integers, lone surrogates: refused either way
            encode_entry(5, "t", actor, event)
        return
    assert encode_entry(5, "t", actor, event) == expected


@given(st.lists(st.text(), max_size=3), st.dictionaries(st.text(), st.integers(-(2**53) + 1, 2**53 - 1), max_size=3))
def test_nested_events_encode_exactly_as_the_reference(items: list[str], meta: dict[str, int]) -> None:
    event = Nested(items=items, meta=meta)
    try:
        expected = _reference(9, "a", event)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - lone surrogates: refused either way
            encode_entry(9, "t", "a", event)
        return
    assert encode_entry(9, "t", "a", event) == expected


class Mixed(Event):
    """Shapes that must not take the flat path, each with a value where a careless one would differ."""

    event_type: ClassVar[str] = "test.mixed"
    either: str | int
    shout: Annotated[str, PlainSerializer(str.upper)]
    named: int = Field(serialization_alias="n")
    bounded: Annotated[str, Field(min_length=1)] = "x"


@given(st.text() | st.integers(-(2**60), 2**60), st.text(), st.integers(-(2**60), 2**60))
def test_events_off_the_flat_path_encode_exactly_as_the_reference(either: str | int, shout: str, named: int) -> None:
    event = Mixed(either=either, shout=shout, named=named)
    try:
        expected = _reference(2, "a", event)
    except Exception:
        with pytest.raises(Exception):  # noqa: B017 - unsafe integers, lone surrogates: refused either way
            encode_entry(2, "t", "a", event)
        return
    assert encode_entry(2, "t", "a", event) == expected


def test_which_events_take_the_flat_encoding() -> None:
    assert _plain_int_fields(Counts) == ("count", "ok")
    assert _plain_int_fields(Note) == ()
    assert _plain_int_fields(Nested) is None and _plain_int_fields(Mixed) is None


def test_an_actor_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="actor must be a string"):
        encode_entry(1, "t", None, Note(text="x"))  # type: ignore[arg-type]
