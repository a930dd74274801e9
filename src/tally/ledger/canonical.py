"""Canonical JSON (RFC 8785, JCS).

`rfc8785` is the reference. For the common case (ASCII keys, no floats, integers within the I-JSON range) the
standard library's sorted, compact encoding produces the same bytes four times faster; anything outside that
case goes to `rfc8785`. A property test holds the two equal.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

_MAX_SAFE_INT = 2**53 - 1


def _fast_path_ok(v: Any) -> bool:
    t = type(v)
    if t is str or t is bool or v is None:
        return True
    if t is int:
        return -_MAX_SAFE_INT <= v <= _MAX_SAFE_INT
    if t is dict:
        for k, x in v.items():
            if type(k) is not str or not k.isascii() or not _fast_path_ok(x):
                return False
        return True
    if t is list or t is tuple:
        return all(_fast_path_ok(x) for x in v)
    return False


# JCS escapes exactly what the standard library's non-ASCII-preserving string encoder escapes.
json_string = json.encoder.encode_basestring
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> bytes:
    if _fast_path_ok(value):
        try:
            return _ENCODER.encode(value).encode("utf-8")
        except UnicodeEncodeError:
            pass  # lone surrogates: let rfc8785 give its error
    return rfc8785.dumps(value)
