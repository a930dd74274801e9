"""The error an upload is refused with, and the JSON type names its messages use.

Shared by the upload parser (formats.py), its readers (readers.py) and its row normalisers (normalise.py); kept
apart so those modules need not import each other. formats.py re-exports both names.
"""

from __future__ import annotations

from typing import Any


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


def json_type(value: Any) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
