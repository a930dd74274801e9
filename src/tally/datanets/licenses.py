"""Licenses as validated SPDX expressions (`license-expression`)."""

from __future__ import annotations

from functools import lru_cache

from license_expression import ExpressionError, Licensing, get_spdx_licensing

from tally.datanets.errors import DatanetError

MAX_EXPRESSION = 256  # the license columns' width (PostgreSQL enforces it)


# Not runtime state: the SPDX license table shipped with license-expression is a constant that parsing only reads.
# Built on first use (tens of ms) rather than at import, so commands that never check a license do not pay for it.
@lru_cache(maxsize=1)
def _licensing() -> Licensing:
    return get_spdx_licensing()


def normalize_license(expression: str) -> str:
    """The canonical form of an SPDX expression, e.g. "mit or apache-2.0" -> "MIT OR Apache-2.0"."""
    if not expression.strip():
        raise DatanetError("license is empty; give an SPDX expression such as CC-BY-4.0", param="license")
    info = _licensing().validate(expression.strip())
    if info.errors or not info.normalized_expression:
        problems = "; ".join(info.errors) or "empty expression"
        raise DatanetError(
            f"license {expression!r} is not a valid SPDX expression ({problems}); "
            "use SPDX ids such as CC-BY-4.0, MIT, Apache-2.0, combined with AND / OR / WITH",
            param="license",
        )
    try:
        normalized = str(_licensing().parse(info.normalized_expression))
    except ExpressionError as exc:
        raise DatanetError(f"license {expression!r}: {exc}", param="license") from exc
    if len(normalized) > MAX_EXPRESSION:
        raise DatanetError(
            f"license expression of {len(normalized)} characters; at most {MAX_EXPRESSION}", param="license"
        )
    return normalized
