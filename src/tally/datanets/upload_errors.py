"""The error an upload is refused with, and the JSON type names its messages use.

Shared by the upload parser (formats.py), its readers (readers.py) and its row normalisers (normalise.py); kept
apart so those modules need not import each other. formats.py re-exports both names.
"""

from __future__ import annotations

from typing import Any

from tally.config.errors import ErrorKind, TallyError


class UploadError(TallyError, ValueError):
    """Why an upload was refused: where (file, line, field), what is wrong, and what was expected.

    str(exc) is one message naming all of them; the attributes (also in `values`) let an API return them as separate
    fields. A file over a configured size or count limit is raised with kind="limit" and the `limit` in `values`.
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
        kind: ErrorKind | None = None,
        **values: Any,
    ) -> None:
        self.file, self.problem, self.expected, self.line, self.field = file, problem, expected, line, field
        self.show_expected = show_expected  # False where the problem already says what was expected
        where = file + (f" line {line}" if line is not None else "") + (f", field '{field}'" if field else "")
        message = f"{where}: {problem}" + (f"; expected {expected}" if show_expected else "")
        fields: dict[str, Any] = {"file": file, "line": line, "field": field, "problem": problem, "expected": expected}
        super().__init__(message, kind=kind, **fields, **values)
        self.extra = values

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (process pools) despite keyword-only arguments
        fields = (self.file, self.problem, self.expected, self.line, self.field, self.show_expected)
        return (_rebuild_error, (*fields, self.kind, self.extra))

    def to_dict(self) -> dict[str, Any]:
        """The error as JSON-ready fields, for API responses."""
        keys = ("file", "line", "field", "problem", "expected")
        return {"message": str(self)} | {key: getattr(self, key) for key in keys}


def _rebuild_error(*args: Any) -> UploadError:
    file, problem, expected, line, field, show, kind, extra = args
    return UploadError(file, problem, expected, line=line, field=field, show_expected=show, kind=kind, **extra)


def json_type(value: Any) -> str:
    """A JSON value's type in JSON's words, for messages."""
    if isinstance(value, bool):
        return "boolean"
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", type(None): "null"}
    return names.get(type(value), type(value).__name__)
