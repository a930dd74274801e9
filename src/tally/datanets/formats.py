"""Parse, validate and normalise a datanet upload, all or nothing.

Why: contributors upload what their tools already write (Alpaca, ShareGPT, OpenAI chat, plain text, Markdown), but
hashing, dedup, signing and training want one form per kind of data, so the same row uploaded in two formats gets
the same hash. The parser is strict: a file is accepted whole or refused with one message that says where (file,
line, field), what is wrong and what was expected. docs/datanet-formats.md lists the formats, rules and messages.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

from tally.datanets.chunking import chunk_markdown, chunk_text
from tally.ledger.canonical import canonical_json

DataKind = Literal["instruction", "chat", "documents"]
Format = Literal["alpaca", "sharegpt", "openai", "text", "markdown"]

__all__ = [
    "DataKind",
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
_SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
_DOCUMENT_EXTENSIONS: dict[str, Format] = {".txt": "text", ".md": "markdown", ".markdown": "markdown"}
_JSON_EXTENSIONS = (".jsonl", ".json")
_MB = 1024 * 1024


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
class ParsedUpload:
    format: Format
    kind: DataKind
    rows: list[Row]


class UploadError(ValueError):
    """Why an upload was refused: where (file, line, field), what is wrong, and what was expected.

    str(exc) is one message naming all of them; the attributes let an API return them as separate fields.
    """

    def __init__(
        self,
        file: str,
        problem: str,
        expected: str,
        *,
        line: int | None = None,
        field: str | None = None,
        show_expected: bool = True,
    ) -> None:
        self.file, self.problem, self.expected, self.line, self.field = file, problem, expected, line, field
        self.show_expected = show_expected  # False where the problem already says what was expected
        where = file + (f" line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {problem}" + (f"; expected {expected}" if show_expected else ""))

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (process pools) despite keyword-only arguments
        return (_rebuild_error, (self.file, self.problem, self.expected, self.line, self.field, self.show_expected))

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready fields, for API responses."""
        keys = ("file", "line", "field", "problem", "expected")
        return {"message": str(self)} | {key: getattr(self, key) for key in keys}


def _rebuild_error(*args: Any) -> UploadError:
    file, problem, expected, line, field, show = args
    return UploadError(file, problem, expected, line=line, field=field, show_expected=show)


def row_hash(content: dict[str, Any]) -> str:
    """The row's identity: hex SHA-256 of its RFC 8785 canonical JSON."""
    return hashlib.sha256(canonical_json(content)).hexdigest()


def detect_format(data: bytes, filename: str) -> Format:
    """The file's format from its extension and, for JSON, the keys of its first row."""
    name = _basename(filename)
    fmt = _format_by_extension(name)
    if fmt is not None:
        return fmt
    text = _decode(data, name)
    _refuse_empty(text, name, documents=False)
    return _format_by_keys(*next(_records(text, name, array=_is_json_array(text, name))), name)


def parse_upload(
    data: bytes,
    filename: str,
    *,
    kind: DataKind | None = None,
    format: Format | None = None,
    limits: UploadLimits = UploadLimits(),
) -> ParsedUpload:
    """Parse, check and normalise a whole upload, or raise UploadError on its first problem (nothing is kept).

    Checks run in this order: size, file type, UTF-8, emptiness, then row by row: JSON syntax, object, fields, row
    count, field length, exact duplicate. `format=` skips detection; `kind=` is the datanet's kind and must match.
    """
    name = _basename(filename)
    if len(data) > limits.max_bytes:
        size, limit = _size(len(data)), _size(limits.max_bytes)
        if size == limit:
            size, limit = f"{len(data)} bytes", f"{limits.max_bytes} bytes"
        raise UploadError(
            name, f"{size} is over the upload limit of {limit} (datanet limit max_bytes)", f"at most {limit}",
            show_expected=False,
        )  # fmt: skip
    fmt = format if format is not None else _format_by_extension(name)
    if fmt is not None and fmt not in FORMAT_KIND:
        raise UploadError(name, f"unknown format {fmt!r}", "one of " + ", ".join(FORMAT_KIND))
    if kind is not None and kind not in _KIND_WORDS:
        raise ValueError(f"unknown data kind {kind!r}; expected one of {', '.join(_KIND_WORDS)}")
    text = _decode(data, name)
    documents = fmt == "text" or fmt == "markdown"
    _refuse_empty(text, name, documents=documents)
    records = None if documents else _records(text, name, array=_is_json_array(text, name))
    if fmt is None:  # JSON by extension: the first row's keys decide
        records = _records(text, name, array=_is_json_array(text, name))
        first = next(records)
        fmt = _format_by_keys(*first, name)
        records = itertools.chain([first], records)
    fmt_kind = FORMAT_KIND[fmt]
    if kind is not None and kind != fmt_kind:
        holds, wanted = _KIND_WORDS[kind]
        raise UploadError(name, f"this datanet holds {holds} but the file is {_FORMAT_WORDS[fmt]}", wanted)
    rows = _document_rows(text, name, fmt, limits) if records is None else _json_rows(records, name, fmt, limits)
    return ParsedUpload(format=fmt, kind=fmt_kind, rows=rows)


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


def _decode(data: bytes, name: str) -> str:
    """UTF-8 only (a leading BOM is dropped): the first bad byte is named with its line and file offset."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UploadError(
            name, f"not UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})", "UTF-8 text", line=line
        ) from None
    return text.removeprefix("\ufeff")


def _refuse_empty(text: str, name: str, *, documents: bool) -> None:
    if not text.strip():
        raise UploadError(name, "the file is empty", "some text" if documents else "at least one row")


def _is_json_array(text: str, name: str) -> bool:
    """A .json file may hold one JSON array of row objects (how Alpaca and ShareGPT dumps ship); else JSON Lines."""
    return not name.lower().endswith(".jsonl") and text.lstrip().startswith("[")


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


def _records(text: str, name: str, *, array: bool) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line, object) for each row: JSON Lines (blank lines skipped but counted) or the items of one JSON array."""
    items = _array_items(text, name) if array else _jsonl_items(text, name)
    expected = "a JSON array of objects" if array else "one JSON object per line"
    for line, value in items:
        if not isinstance(value, dict):
            raise UploadError(name, f"a JSON {json_type(value)}, not an object", expected, line=line)
        yield line, value


def _jsonl_items(text: str, name: str) -> Iterator[tuple[int, Any]]:
    for number, raw in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a JSON string
        if raw.strip():
            if (deep := _too_deep(raw)) is not None:
                raise _json_error(name, _TOO_DEEP, number, deep + 1, "one JSON object per line")
            try:
                yield number, json.loads(raw)
            except json.JSONDecodeError as exc:
                raise _json_error(name, exc.msg, number, exc.colno, "one JSON object per line") from None


_DECODER = json.JSONDecoder()
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_MAX_DEPTH = 64  # normalised rows nest 4 deep; the limit keeps the C decoder far from the C stack's end
_TOO_DEEP = f"nested deeper than {_MAX_DEPTH} levels"
_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')  # a whole string (skipped), or a bracket


def _too_deep(text: str) -> int | None:
    """Where nesting first goes past _MAX_DEPTH, if it does. Checked before decoding: deep input can crash CPython."""
    if text.count("[") + text.count("{") <= _MAX_DEPTH:
        return None
    depth = 0
    for token in _TOKENS.finditer(text):
        bracket = token.group()
        if bracket in ("[", "{"):
            depth += 1
            if depth > _MAX_DEPTH:
                return token.start()
        elif bracket in ("]", "}"):
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


def _json_rows(records: Iterator[tuple[int, dict[str, Any]]], name: str, fmt: str, limits: UploadLimits) -> list[Row]:
    normalise = _NORMALISERS[fmt]
    rows: list[Row] = []
    seen: dict[str, int] = {}
    for line, obj in records:
        at = _At(name, line, limits.max_field_chars)
        content = normalise(obj, at)
        if len(rows) == limits.max_rows:
            raise UploadError(
                name, f"more rows than the limit of {limits.max_rows} (datanet limit max_rows)",
                f"at most {limits.max_rows} rows per upload", line=line,
            )  # fmt: skip
        at.raise_too_long()
        digest = row_hash(content)
        if digest in seen:
            raise UploadError(
                name, f"line {line} repeats line {seen[digest]} (the same row after normalisation)",
                "each row once per upload", line=line,
            )  # fmt: skip
        seen[digest] = line
        rows.append(Row(content, digest, line, _row_text(content)))
    return rows


def _document_rows(text: str, name: str, fmt: Format, limits: UploadLimits) -> list[Row]:
    chunk = chunk_markdown if fmt == "markdown" else chunk_text
    chunks = chunk(text, limits.chunk_chars, limits.chunk_overlap)
    if len(chunks) > limits.max_rows:
        raise UploadError(
            name, f"{len(chunks)} chunks is more than the limit of {limits.max_rows} rows (datanet limit max_rows)",
            f"at most {limits.max_rows} chunks: split the document or raise chunk_chars",
        )  # fmt: skip
    rows = []
    for index, piece in enumerate(chunks):
        content = {"text": piece, "source": name, "chunk": index}
        rows.append(Row(content, row_hash(content), None, piece))
    return rows


def _size(n: int) -> str:
    return f"{n / _MB:.1f} MB" if n >= _MB // 10 else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def json_type(value: Any) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _a(value: Any) -> str:
    kind = json_type(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


class _At:
    """Where a row came from, so every check can fail with the right file, line and field.

    An over-long string is remembered rather than raised at once: the row-count check comes first.
    """

    def __init__(self, file: str, line: int, max_chars: int) -> None:
        self.file, self.line, self.max_chars = file, line, max_chars
        self.too_long: tuple[str, int] | None = None

    def fail(self, field: str, problem: str, expected: str) -> NoReturn:
        raise UploadError(self.file, problem, expected, line=self.line, field=field)

    def raise_too_long(self) -> None:
        if self.too_long is not None:
            field, n = self.too_long
            limit = self.max_chars
            self.fail(
                field, f"{n} characters is over the limit of {limit} (datanet limit max_field_chars)",
                f"at most {limit} characters per field",
            )  # fmt: skip

    def string(self, value: Any, field: str, *, empty_ok: bool = False) -> str:
        if not isinstance(value, str):
            self.fail(field, f"{_a(value)}, not a string", "a string")
        if not empty_ok and not value.strip():
            self.fail(field, "empty", "a non-empty string")
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate from a JSON escape such as "\ud800"
                self.fail(field, f"an unpaired surrogate (U+{ord(value[exc.start]):04X})", "valid Unicode text")
        if len(value) > self.max_chars and self.too_long is None:
            self.too_long = (field, len(value))
        return value

    def keys(
        self, obj: dict[str, Any], allowed: tuple[str, ...], required: tuple[str, ...], what: str, value: str,
        prefix: str = "",
    ) -> None:  # fmt: skip
        """Required keys present, no others: extra data is refused, never silently dropped."""
        for key in required:
            if key not in obj:
                self.fail(prefix + key, "missing", f"{value} ({what} need {' and '.join(required)})")
        for key in obj:
            if key not in allowed:
                self.fail(prefix + key, "unknown key", f"only {', '.join(allowed)} ({what} are strict)")

    def objects(self, value: Any, field: str, keys: str) -> list[dict[str, Any]]:
        if not isinstance(value, list):
            self.fail(field, f"{_a(value)}, not a list", f"a list of objects with {keys}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                self.fail(f"{field}[{i}]", f"{_a(item)}, not an object", f"an object with {keys}")
        return value

    def role(self, value: Any, field: str, roles: dict[str, str], noun: str) -> str:
        if not isinstance(value, str):
            self.fail(field, f"{_a(value)}, not a {noun}", "one of " + ", ".join(roles))
        if value not in roles:
            self.fail(field, f"unknown {noun} {value!r}", "one of " + ", ".join(roles))
        return roles[value]

    def conversation(self, messages: list[dict[str, str]], field: str) -> dict[str, Any]:
        roles = {m["role"] for m in messages}
        for role in ("user", "assistant"):
            if role not in roles:
                self.fail(field, f"no {role} message", "at least one user and one assistant message")
        return {"messages": messages}


def _alpaca(obj: dict[str, Any], at: _At) -> dict[str, Any]:
    at.keys(obj, ("instruction", "input", "output"), ("instruction", "output"), "Alpaca rows", "a string")
    given_input = obj.get("input")
    return {
        "instruction": at.string(obj["instruction"], "instruction"),
        "input": at.string("" if given_input is None else given_input, "input", empty_ok=True),
        "output": at.string(obj["output"], "output"),
    }


def _sharegpt(obj: dict[str, Any], at: _At) -> dict[str, Any]:
    at.keys(obj, ("conversations", "system"), ("conversations",), "ShareGPT rows", "a list of turns")
    messages = []
    if "system" in obj:  # a top-level system prompt, as LLaMA-Factory's ShareGPT variant writes it
        messages.append({"role": "system", "content": at.string(obj["system"], "system")})
    for i, turn in enumerate(at.objects(obj["conversations"], "conversations", "from and value")):
        path = f"conversations[{i}]"
        at.keys(turn, ("from", "value"), ("from", "value"), "ShareGPT turns", "a string", f"{path}.")
        role = at.role(turn["from"], f"{path}.from", _SHAREGPT_ROLES, "role tag")
        messages.append({"role": role, "content": at.string(turn["value"], f"{path}.value")})
    return at.conversation(messages, "conversations")


def _openai(obj: dict[str, Any], at: _At) -> dict[str, Any]:
    at.keys(obj, ("messages",), ("messages",), "OpenAI rows", "a list of messages")
    messages = []
    for i, message in enumerate(at.objects(obj["messages"], "messages", "role and content")):
        path = f"messages[{i}]"
        at.keys(message, ("role", "content"), ("role", "content"), "OpenAI messages", "a value", f"{path}.")
        role = at.role(message["role"], f"{path}.role", _OPENAI_ROLES, "role")
        messages.append({"role": role, "content": _openai_content(message["content"], f"{path}.content", at)})
    return at.conversation(messages, "messages")


def _openai_content(value: Any, path: str, at: _At) -> str:
    """A string, or a list of text parts joined with newlines (as vLLM does); images and audio are refused."""
    if not isinstance(value, list):
        return at.string(value, path)
    texts = []
    for j, part in enumerate(at.objects(value, path, "type and text")):
        part_path = f"{path}[{j}]"
        if part.get("type") != "text":
            problem = f"unsupported part type {part['type']!r}" if "type" in part else "missing"
            at.fail(f"{part_path}.type", problem, "'text' (only text parts are stored)")
        at.keys(part, ("type", "text"), ("type", "text"), "content parts", "a string", f"{part_path}.")
        texts.append(at.string(part["text"], f"{part_path}.text"))
    if not texts:
        at.fail(path, "an empty list of parts", "a string or a non-empty list of text parts")
    return at.string("\n".join(texts), path)


_NORMALISERS: dict[str, Callable[[dict[str, Any], _At], dict[str, Any]]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
}


def _row_text(content: dict[str, Any]) -> str:
    """The row's words for dedup and search: its non-empty strings, one per line, without role names."""
    if "messages" in content:
        parts = [m["content"] for m in content["messages"]]
    else:
        parts = [content["instruction"], content["input"], content["output"]]
    return "\n".join(p for p in parts if p)
