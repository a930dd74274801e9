"""The nesting-depth pre-check on hostile input: linear time, and the same verdict as decoding would give."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.datanets import readers
from tally.datanets.upload_errors import UploadError

LIMIT = readers._MAX_DEPTH


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


# strings full of the characters that confuse a naive scan: brackets, quotes, backslashes, line separators
_text = st.text(alphabet=st.sampled_from('[]{}"\\/ab \u2028\n\t'), max_size=12)
_leaf = st.none() | st.booleans() | st.integers() | _text
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3))


@st.composite
def _nested(draw: st.DrawFn) -> Any:
    """A random JSON value wrapped in 0..2*LIMIT more levels, so both verdicts come up often."""
    value = draw(_json)
    for _ in range(draw(st.integers(0, 2 * LIMIT))):
        value = [value] if draw(st.booleans()) else {draw(_text): value}
    return value


@settings(max_examples=300, deadline=None)
@given(_nested(), st.booleans())
def test_the_check_agrees_with_decoding_on_depth(value: Any, ascii_only: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)
    assert json.loads(text) == value
    assert (readers._too_deep(text) is not None) == (_depth(value) > LIMIT)


# the quadratic regex the linear scan replaced: the reference for verdicts and positions on any text
_OLD_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def _old_too_deep(text: str) -> int | None:
    if text.count("[") + text.count("{") <= LIMIT:
        return None
    depth = 0
    for token in _OLD_TOKENS.finditer(text):
        if token.group() in ("[", "{"):
            depth += 1
            if depth > LIMIT:
                return token.start()
        elif token.group() in ("]", "}"):
            depth -= 1
    return None


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet=st.sampled_from('[[[{{]}"\\\na, '), min_size=LIMIT, max_size=400))
def test_the_scan_matches_the_old_check_on_any_text(text: str) -> None:
    assert readers._too_deep(text) == _old_too_deep(text)


HOSTILE = {
    "open brackets": "[" * 1_000_000,
    "escaped brackets in an unclosed string": '"' + "\\[" * 500_000,
    "escaped quotes and brackets in a string": '{"a": "' + '\\"[' * 333_000 + '"}',
    "flat pairs": "[]" * 500_000,
}


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_one_megabyte_hostile_line_is_answered_in_linear_time(line: str) -> None:
    start = time.perf_counter()
    try:
        list(readers.json_records(line, "h.jsonl", array=False))
    except UploadError as exc:
        assert exc.kind == "invalid" and "h.jsonl line 1" in str(exc)
    assert time.perf_counter() - start < 5  # about 0.01-0.35 s; the bound is loose so slow CI does not flake


def test_the_error_names_file_line_and_column() -> None:
    text = '{"ok": 1}\n' + '{"a": "[[[", "b": ' + "[" * (LIMIT + 5) + "]" * (LIMIT + 5) + "}"
    with pytest.raises(UploadError) as caught:
        list(readers.json_records(text, "d.jsonl", array=False))
    column = len('{"a": "[[[", "b": ') + LIMIT  # the object is one level; its string's brackets are none
    expected = f"d.jsonl line 2: invalid JSON (nested deeper than {LIMIT} levels at column {column})"
    assert str(caught.value).startswith(expected)
