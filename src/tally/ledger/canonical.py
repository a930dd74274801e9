"""Canonical JSON (RFC 8785, JCS).

`rfc8785` is the reference. For the common case (ASCII keys, no floats, integers within the I-JSON range)
`orjson`'s sorted compact encoding produces the same bytes (it escapes strings exactly as JCS does, and ASCII keys
sort the same by UTF-8 bytes as by UTF-16 units) many times faster; anything outside that case goes to `rfc8785`.
A property test holds the two equal.
"""

from __future__ import annotations

from typing import Any

import orjson
import rfc8785

MAX_SAFE_INT = 2**53 - 1
_SORTED = orjson.OPT_SORT_KEYS


def _fast_path_ok(v: Any) -> bool:
    t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return -MAX_SAFE_INT <= v <= MAX_SAFE_INT
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or not k.isascii() or not _fast_path_ok(x):
                return False
        return True
    if t is list or t is tuple:
        return all(_fast_path_ok(x) for x in v)
    return False


def canonical_json(value: Any) -> bytes:
    return canonical_json_checked(value) if _fast_path_ok(value) else rfc8785.dumps(value)


def canonical_json_checked(value: Any) -> bytes:
    """For a value already known to lie in the fast path's domain (ASCII keys, no floats, safe integers)."""
    try:
        return orjson.dumps(value, option=_SORTED)
    except orjson.JSONEncodeError:
        return rfc8785.dumps(value)  # lone surrogates: rfc8785 names the problem
