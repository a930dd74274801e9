"""Errors in YAML files that users write (training configs, pipelines, fee policies) name the line and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def yaml_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the node at `loc` (mapping keys and list indices) in YAML `text`, or the deepest one
    that exists (a missing field is reported at its parent)."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError:
        return None
    line = None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == str(part)), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            node = None
    return node.start_mark.line + 1 if node is not None else line


def validation_message(source: str, exc: ValidationError, text: str | None = None) -> str:
    """`file line N: field a.b: what was wrong`, from the first pydantic error.

    Union branch tags that pydantic puts in the location (`int`, `function-after[...]`) are not fields and are
    left out; an unknown key says so plainly.
    """
    first = exc.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and (p[:1].isupper() or "[" in p or p == "int")))
    where = ".".join(str(p) for p in loc) or "(top level)"
    line = yaml_line(text, loc) if text is not None else None
    msg = "unknown field" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
    return f"{source}{f' line {line}' if line else ''}: field {where}: {msg}"


def read_yaml(path: Path, error: type[Exception], what: str, hint: str = "") -> tuple[Any, str]:
    """(parsed YAML, its text) of a user's file, or `error` saying it is missing (`no <what> at <path><hint>`) or
    not YAML."""
    try:
        text = path.read_text(encoding="utf-8")
        return yaml.safe_load(text), text
    except FileNotFoundError:
        raise error(f"no {what} at {path}{hint}") from None
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from None


def validate(model: type[M], raw: Any, source: str, error: type[Exception], text: str | None = None) -> M:
    """`model` validated from `raw`, or `error` with `validation_message` (file, line, field, what was wrong)."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise error(validation_message(source, exc, text)) from None
