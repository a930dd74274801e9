"""Read an upload's bytes as text, and its text as JSON rows: JSON Lines or one JSON array of objects.

Every failure is an UploadError naming the file, the line and (for JSON syntax) the column. Nesting depth is
checked before decoding, since deeply nested input can crash CPython's C decoder. Used by formats.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from tally.datanets.upload_errors import UploadError, json_type


def decode(data: bytes, name: str) -> str:
    """UTF-8 only (a leading BOM is dropped): the first bad byte is named with its line and file offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UploadError(
            name, f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})", "UTF-8 text", line=line
        ) from None
    return text.removeprefix("\ufeff")


def refuse_empty(text: str, name: str, *, documents: bool) -> None:
    if not text.strip():
        raise UploadError(name, "the file is empty", "some text" if documents else "at least one row")


def is_json_array(text: str, name: str) -> bool:
    """A .json file may hold one JSON array of row objects (how Alpaca and ShareGPT dumps ship); else JSON Lines."""
    return not name.lower().endswith(".jsonl") and text.lstrip().startswith("[")


def json_records(
    text: str, name: str, *, array: bool, problems: list[UploadError] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each row: JSON Lines (blank lines skipped but counted) or the items of one JSON array.

    With `problems`, a JSON Lines line that is not a JSON object is added to it and reading goes on with the next
    line (so every bad line can be reported); without, the first one is raised. A JSON array cannot be read past a
    syntax error: that one is always raised."""
    items = _array_items(text, name) if array else _jsonl_items(text, name, problems)
    expected = "a JSON array of objects" if array else "one JSON object per line"
    for line, value in items:
        if not isinstance(value, dict):
            error = UploadError(name, f"a JSON {json_type(value)}, not an object", expected, line=line)
            if problems is None:
                raise error
            problems.append(error)
            continue
        yield line, value


def _jsonl_items(text: str, name: str, problems: list[UploadError] | None = None) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a JSON string
        if raw.strip():
            error = None
            if (deep := _too_deep(raw)) is not None:
                error = _json_error(name, _TOO_DEEP, number, deep + 1, "one JSON object per line")
            else:
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as exc:
                    error = _json_error(name, exc.msg, number, exc.colno, "one JSON object per line")
            if error is None:
                yield number, value
            elif problems is None:
                raise error
            else:
                problems.append(error)


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_MAX_DEPTH = 64  # normalised rows nest 4 deep; the limit keeps the C decoder far from the C stack's end
_TOO_DEEP = f"nested deeper than {_MAX_DEPTH} levels"
_TOKENS = re.compile(r'["\[\]{}]')  # a string's opening quote, or a bracket
_BRACKET = re.compile(r"[\[\]{}]")
_STRING_BODY = re.compile(r'[^"\\]*+(?:\\.[^"\\]*+)*+')  # possessive: one pass, never backtracks


def _too_deep(text: str) -> int | None:
    """Where nesting first goes past _MAX_DEPTH, if it does. Checked before decoding: deep input can crash CPython.

    One left-to-right pass, so hostile lines cost linear time. Brackets inside a string (escapes honoured) do not
    count. A quote whose string never closes (the text ends, or a backslash ends a line first) opens no string:
    its brackets count, and so do those after any quote inside it, since such a quote cannot close either.
    """
    if text.count("[") + text.count("{") <= _MAX_DEPTH:
        return None
    depth, pos = 0, 0
    while (token := _TOKENS.search(text, pos)) is not None:
        char, pos = token.group(), token.end()
        if char == '"':
            body_end = _STRING_BODY.match(text, pos).end()  # type: ignore[union-attr]  # matches the empty string
            if text.startswith('"', body_end):
                pos = body_end + 1
                continue
            for bracket in _BRACKET.finditer(text, pos, body_end):
                depth += 1 if bracket.group() in "[{" else -1
                if depth > _MAX_DEPTH:
                    return bracket.start()
            pos = body_end
        elif char in "[{":
            depth += 1
            if depth > _MAX_DEPTH:
                return token.start()
        else:
            depth -= 1
    return None


def _array_items(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """Items of a top-level JSON array with the line each starts on, decoded one at a time."""
    expected = "a JSON array of objects"

    def fail(msg: str, at: int) -> UploadError:
        line = text.count("\n", 0, at) + 1
        return _json_error(name, msg, line, at - text.rfind("\n", 0, at), expected)

    if (deep := _too_deep(text)) is not None:
        raise fail(_TOO_DEEP, deep)
    pos = _WHITESPACE.match(text, 0).end() + 1  # type: ignore[union-attr]  # just after "["
    pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
    line, counted = 1, 0
    if text.startswith("]", pos):
        raise UploadError(name, "the JSON array is empty", "at least one row")
    while True:
        line += text.count("\n", counted, pos)
        counted = pos
        try:
            value, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise fail(exc.msg, exc.pos) from None
        yield line, value
        pos = _WHITESPACE.match(text, pos).end()  # type: ignore[union-attr]
        if text.startswith(",", pos):
            pos = _WHITESPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
        elif text.startswith("]", pos):
            end = _WHITESPACE.match(text, pos + 1).end()  # type: ignore[union-attr]
            if end != len(text):
                raise fail("Extra data", end)
            return
        else:
            raise fail("Expecting ',' delimiter" if pos < len(text) else "Unterminated array", pos)


def _json_error(name: str, msg: str, line: int, column: int | None, expected: str) -> UploadError:
    where = f" at column {column}" if column is not None else ""
    return UploadError(name, f"invalid JSON ({msg}{where})", expected, line=line)
