"""Uploads from strangers: any bytes under any name parse into rows or fail as an UploadError naming the file,
never another exception."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tally.datanets.formats import UploadLimits, parse_upload
from tally.datanets.upload_errors import UploadError

NAMES = st.sampled_from(["rows.jsonl", "rows.json", "notes.txt", "notes.md", "data", "x.csv", "../../etc/passwd"])
LIMITS = UploadLimits(max_bytes=4096, max_rows=20, max_field_chars=400, chunk_chars=200, chunk_overlap=20)
VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
ROW = st.dictionaries(
    st.sampled_from(["instruction", "input", "output", "messages", "conversations", "text", "role", "content", "x"]),
    VALUE,
    max_size=4,
)


def _parse(data: bytes, name: str) -> None:
    try:
        parsed = parse_upload(data, name, limits=LIMITS)
    except UploadError as exc:
        assert exc.message and exc.kind in ("invalid", "limit")
        return
    assert parsed.rows and len(parsed.rows) <= LIMITS.max_rows


@examples(max_examples=300, deadline=None)
@given(st.binary(max_size=600), NAMES)
def test_any_bytes(data: bytes, name: str) -> None:
    _parse(data, name)


@examples(max_examples=300, deadline=None)
@given(st.lists(ROW, min_size=1, max_size=6), st.sampled_from(["rows.jsonl", "rows.json"]), st.booleans())
def test_json_rows_of_any_shape(rows: list[dict[str, Any]], name: str, as_array: bool) -> None:
    text = json.dumps(rows) if as_array else "\n".join(json.dumps(r) for r in rows)
    _parse(text.encode(), name)
