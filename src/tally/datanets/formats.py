"""Parse, validate and normalise a datanet upload, all or nothing.

Why: contributors upload what their tools already write (Alpaca, ShareGPT, OpenAI chat, plain text, Markdown), but
hashing, dedup, signing and training want one form per kind of data, so the same row uploaded in two formats gets
the same hash. The parser is strict: a file is accepted whole or refused with one message that says where (file,
line, field), what is wrong and what was expected. docs/datanet-formats.md lists the formats, rules and messages.

This module is the public API and the driver; readers.py reads JSON Lines and JSON arrays, normalise.py checks and
normalises Alpaca, ShareGPT and OpenAI rows, and upload_errors.py holds UploadError (re-exported here).
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from tally.datanets.chunking import chunk_markdown, chunk_text
from tally.datanets.normalise import NORMALISERS, At, row_text
from tally.datanets.readers import decode, is_json_array, json_records, refuse_empty
from tally.datanets.upload_errors import UploadError
from tally.datanets.upload_errors import json_type as json_type  # re-exported: public here before the split
from tally.ledger.canonical import canonical_json

DataKind = Literal["instruction", "chat", "documents"]
Format = Literal["alpaca", "sharegpt", "openai", "text", "markdown"]

__all__ = [
    "DataKind",
    "DroppedRow",
    "Format",
    "ParsedUpload",
    "Row",
    "UploadError",
    "UploadLimits",
    "detect_format",
    "parse_upload",
    "row_hash",
]

FORMAT_KIND: dict[str, DataKind] = {
    "alpaca": "instruction",
    "sharegpt": "chat",
    "openai": "chat",
    "text": "documents",
    "markdown": "documents",
}
_FORMAT_WORDS = {
    "alpaca": "Alpaca instruction pairs",
    "sharegpt": "ShareGPT conversations",
    "openai": "OpenAI chat messages",
    "text": "a plain-text document",
    "markdown": "a Markdown document",
}
_KIND_WORDS = {  # kind: (what the datanet holds, what file it expects)
    "instruction": ("instruction rows", "an instruction file (Alpaca JSONL)"),
    "chat": ("chat rows", "a chat file (ShareGPT or OpenAI messages JSONL)"),
    "documents": ("documents", "a document (.txt or .md)"),
}
_DOCUMENT_EXTENSIONS: dict[str, Format] = {".txt": "text", ".md": "markdown", ".markdown": "markdown"}
_JSON_EXTENSIONS = (".jsonl", ".json")
_MB = 1024 * 1024
MAX_PROBLEMS = 1000  # bad lines reported for one upload; reading stops after as many


@dataclass(frozen=True)
class UploadLimits:
    """Per-datanet bounds on one upload; they keep a single request from costing unbounded time or storage."""

    max_bytes: int = 20 * 1024 * 1024
    max_rows: int = 200_000
    max_field_chars: int = 100_000
    chunk_chars: int = 2000  # documents: target chunk size
    chunk_overlap: int = 200

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_rows, self.max_field_chars, self.chunk_chars) < 1:
            raise ValueError("upload limits must be positive")
        if not 0 <= self.chunk_overlap < self.chunk_chars <= self.max_field_chars:
            raise ValueError("need 0 <= chunk_overlap < chunk_chars <= max_field_chars")


@dataclass(frozen=True)
class Row:
    """One normalised row: what is stored, hashed, signed over (via the hash) and searched."""

    content: dict[str, Any]  # the normalised row
    row_hash: str  # hex sha256 of canonical_json(content)
    line: int | None  # 1-based source line (JSON) or None for documents
    text: str  # the row's text for dedup/search: its string fields joined with "\n"


@dataclass(frozen=True)
class DroppedRow:
    """A row left out of an upload because it repeats one (asked for with `drop_duplicates`)."""

    line: int | None
    row_hash: str
    reason: str  # "repeats line 3", "already in datanet 'x' (contribution ab12...)"
    duplicate_of_line: int | None = None  # the upload's line it repeats
    contribution: str | None = None  # the contribution that holds it already


@dataclass(frozen=True)
class ParsedUpload:
    format: Format
    kind: DataKind
    rows: list[Row]
    dropped: list[DroppedRow] = field(default_factory=list)


def row_hash(content: dict[str, Any]) -> str:
    """The row's identity: hex SHA-256 of its RFC 8785 canonical JSON."""
    return hashlib.sha256(canonical_json(content)).hexdigest()


def detect_format(data: bytes, filename: str) -> Format:
    """The file's format from its extension and, for JSON, the keys of its first row."""
    name = _basename(filename)
    fmt = _format_by_extension(name)
    if fmt is not None:
        return fmt
    text = decode(data, name)
    refuse_empty(text, name, documents=False)
    return _format_by_keys(*next(json_records(text, name, array=is_json_array(text, name))), name)


def parse_upload(
    data: bytes,
    filename: str,
    *,
    kind: DataKind | None = None,
    format: Format | None = None,
    limits: UploadLimits = UploadLimits(),
    drop_duplicates: bool = False,
) -> ParsedUpload:
    """Parse, check and normalise a whole upload, or raise UploadError on its first problem (nothing is kept).

    Checks run in this order: size, file type, UTF-8, emptiness, then row by row: JSON syntax, object, fields, row
    count, field length, exact duplicate. `format=` skips detection; `kind=` is the datanet's kind and must match.

    Rows of JSON files are all checked: the error raised is the first bad line's, and its `problems` value lists
    every bad line (up to MAX_PROBLEMS) as `UploadError.to_dict()` fields, so a contributor can fix them in one go.
    `drop_duplicates`: a row that repeats an earlier row of the file is left out (listed in `dropped`) instead of
    refusing the file.
    """
    name = _basename(filename)
    if len(data) > limits.max_bytes:
        size, limit = _size(len(data)), _size(limits.max_bytes)
        if size == limit:
            size, limit = f"{len(data)} bytes", f"{limits.max_bytes} bytes"
        raise UploadError(
            name, f"{size} is over the upload limit of {limit} (the datanet's max_upload_bytes)", f"at most {limit}",
            show_expected=False, kind="limit", limit=limits.max_bytes, size=len(data),
        )  # fmt: skip
    fmt = format if format is not None else _format_by_extension(name)
    if fmt is not None and fmt not in FORMAT_KIND:
        raise UploadError(name, f"unknown format {fmt!r}", "one of " + ", ".join(FORMAT_KIND))
    if kind is not None and kind not in _KIND_WORDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(_KIND_WORDS)}")
    text = decode(data, name)
    documents = fmt == "text" or fmt == "markdown"
    refuse_empty(text, name, documents=documents)
    problems: list[UploadError] = []
    records = None if documents else json_records(text, name, array=is_json_array(text, name), problems=problems)
    if fmt is None:  # JSON by extension: the first good row's keys decide
        assert records is not None
        first = next(records, None)
        if first is None:
            raise _refused(problems)
        fmt = _format_by_keys(*first, name)
        records = itertools.chain([first], records)
    fmt_kind = FORMAT_KIND[fmt]
    if kind is not None and kind != fmt_kind:
        holds, wanted = _KIND_WORDS[kind]
        raise UploadError(name, f"this datanet holds {holds} but the file is {_FORMAT_WORDS[fmt]}", wanted)
    if records is None:
        return ParsedUpload(format=fmt, kind=fmt_kind, rows=_document_rows(text, name, fmt, limits))
    dropped: list[DroppedRow] = []
    rows = _json_rows(records, name, fmt, limits, problems, dropped if drop_duplicates else None)
    return ParsedUpload(format=fmt, kind=fmt_kind, rows=rows, dropped=dropped)


def _refused(problems: list[UploadError]) -> UploadError:
    """The first problem, carrying the list of all of them (`problems`, `more_problems`)."""
    first = problems[0]
    listed = [p.to_dict() | {k: v for k, v in p.extra.items() if k != "problems"} for p in problems[:MAX_PROBLEMS]]
    return UploadError(
        first.file, first.problem, first.expected, line=first.line, field=first.field,
        show_expected=first.show_expected, kind=first.kind,
        **{**first.extra, "problems": listed, "more_problems": len(problems) >= MAX_PROBLEMS},
    )  # fmt: skip


def _basename(filename: str) -> str:
    """Messages and document sources name the file, never the uploader's local directories."""
    return re.split(r"[\\/]", filename)[-1] or filename


def _format_by_extension(name: str) -> Format | None:
    """A document format, or None for JSON (decided by keys); anything else is refused."""
    lower = name.lower()
    for ext, fmt in _DOCUMENT_EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    if lower.endswith(_JSON_EXTENSIONS):
        return None
    suffix = "." + lower.rsplit(".", 1)[1] if "." in lower else "no extension"
    raise UploadError(
        name, f"unsupported file type ({suffix})",
        "a .jsonl, .json, .txt, .md or .markdown file, or format= to say how to read it",
    )  # fmt: skip


def _format_by_keys(line: int, obj: dict[str, Any], name: str) -> Format:
    """The JSON format a row's keys point to (the first row decides for the whole file)."""
    if "conversations" in obj:
        return "sharegpt"
    if "messages" in obj:
        return "openai"
    if "instruction" in obj or "output" in obj:
        return "alpaca"
    found = ", ".join(obj) if obj else "none"
    raise UploadError(
        name, f"cannot tell the format from the keys of the first row (found: {found})",
        "alpaca (instruction, input, output), sharegpt (conversations) or openai (messages) rows; "
        "pass format= to choose one", line=line,
    )  # fmt: skip


def _json_rows(
    records: Iterator[tuple[int, dict[str, Any]]],
    name: str,
    fmt: str,
    limits: UploadLimits,
    problems: list[UploadError],
    dropped: list[DroppedRow] | None = None,
) -> list[Row]:
    """The rows; each bad line goes to `problems` (raised together at the end), each repeated row to `dropped`
    when it is given."""
    normalise = NORMALISERS[fmt]
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for line, obj in records:
        if len(problems) >= MAX_PROBLEMS:
            break
        at = At(name, line, limits.max_field_chars)
        try:
            content = normalise(obj, at)
        except UploadError as exc:
            problems.append(exc)
            continue
        if len(rows) == limits.max_rows:
            if problems:
                break
            raise UploadError(
                name, f"more rows than the limit of {limits.max_rows} (datanet limit max_rows)",
                f"at most {limits.max_rows} rows per upload", line=line, kind="limit", limit=limits.max_rows,
            )  # fmt: skip
        try:
            at.raise_too_long()
        except UploadError as exc:
            problems.append(exc)
            continue
        digest = row_hash(content)
        if digest in seen:
            reason = f"line {line} repeats line {seen[digest]} (the same row after normalisation)"
            if dropped is not None:
                dropped.append(DroppedRow(line, digest, f"repeats line {seen[digest]}", duplicate_of_line=seen[digest]))
            else:
                problems.append(
                    UploadError(name, reason, "each row once per upload", line=line, duplicate_of_line=seen[digest])
                )
            continue
        seen[digest] = line
        rows.append(Row(content, digest, line, row_text(content)))
    if problems:
        raise _refused(problems)
    return rows


def _document_rows(text: str, name: str, fmt: Format, limits: UploadLimits) -> list[Row]:
    chunk = chunk_markdown if fmt == "markdown" else chunk_text
    chunks = chunk(text, limits.chunk_chars, limits.chunk_overlap)
    if len(chunks) > limits.max_rows:
        raise UploadError(
            name, f"{len(chunks)} chunks is more than the limit of {limits.max_rows} rows (datanet limit max_rows)",
            f"at most {limits.max_rows} chunks: split the document or raise chunk_chars",
            kind="limit", limit=limits.max_rows, size=len(chunks),
        )  # fmt: skip
    rows = []
    for index, piece in enumerate(chunks):
        content = {"text": piece, "source": name, "chunk": index}
        rows.append(Row(content, row_hash(content), None, piece))
    return rows


def _size(n: int) -> str:
    return f"{n / _MB:.1f} MB" if n >= _MB // 10 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"
