"""Normalise one JSON row of an upload: Alpaca, ShareGPT or OpenAI chat, checked field by field.

Each normaliser turns a row object into its kind's one normal form (docs/datanet-formats.md) or raises UploadError
naming the file, line and field (a dotted path such as messages[2].role). Rows are strict: a missing or unknown key
is refused, never guessed at or silently dropped. Used by formats.py.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from tally.datanets.upload_errors import UploadError, json_type

_SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
_OPENAI_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


def _a(value: Any) -> str:
    kind = json_type(value)
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


class At:
    """Where a row came from, so every check can fail with the right file, line and field.

    An over-long string is remembered rather than raised at once: the row-count check comes first.
    """

    def __init__(self, file: str, line: int, max_chars: int) -> None:
        self.file, self.line, self.max_chars = file, line, max_chars
        self.too_long: tuple[str, int] | None = None

    def fail(self, field: str, problem: str, expected: str, **extra: Any) -> NoReturn:
        raise UploadError(self.file, problem, expected, line=self.line, field=field, **extra)

    def raise_too_long(self) -> None:
        if self.too_long is not None:
            field, n = self.too_long
            limit = self.max_chars
            self.fail(
                field, f"{n} characters is over the limit of {limit} (datanet limit max_field_chars)",
                f"at most {limit} characters per field", kind="limit", limit=limit, size=n,
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


def _alpaca(obj: dict[str, Any], at: At) -> dict[str, Any]:
    at.keys(obj, ("instruction", "input", "output"), ("instruction", "output"), "Alpaca rows", "a string")
    given_input = obj.get("input")
    return {
        "instruction": at.string(obj["instruction"], "instruction"),
        "input": at.string("" if given_input is None else given_input, "input", empty_ok=True),
        "output": at.string(obj["output"], "output"),
    }


def _sharegpt(obj: dict[str, Any], at: At) -> dict[str, Any]:
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


def _openai(obj: dict[str, Any], at: At) -> dict[str, Any]:
    at.keys(obj, ("messages",), ("messages",), "OpenAI rows", "a list of messages")
    messages = []
    for i, message in enumerate(at.objects(obj["messages"], "messages", "role and content")):
        path = f"messages[{i}]"
        at.keys(message, ("role", "content"), ("role", "content"), "OpenAI messages", "a value", f"{path}.")
        role = at.role(message["role"], f"{path}.role", _OPENAI_ROLES, "role")
        messages.append({"role": role, "content": _openai_content(message["content"], f"{path}.content", at)})
    return at.conversation(messages, "messages")


def _openai_content(value: Any, path: str, at: At) -> str:
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


NORMALISERS: dict[str, Callable[[dict[str, Any], At], dict[str, Any]]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "openai": _openai,
}


def row_text(content: dict[str, Any]) -> str:
    """The row's words for dedup and search: its non-empty strings, one per line, without role names."""
    if "messages" in content:
        parts = [m["content"] for m in content["messages"]]
    else:
        parts = [content["instruction"], content["input"], content["output"]]
    return "\n".join(p for p in parts if p)
