"""Entry bundles: how a run of consecutive entries is laid out in one `ledger_bundles` row.

Entries are concatenated, each behind its length as a 4-byte big-endian integer (the C2SP tlog-tiles bundle
layout, with a 32-bit length since an entry may exceed 64 KiB); leaf hashes are concatenated 32-byte digests.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from tally.config.errors import TallyError

HASH_SIZE = 32
LENGTH_BYTES = 4


class BundleError(TallyError, ValueError):
    """A stored bundle does not hold the entries its row says it holds: the stored log is at fault."""

    kind = "internal"


def frame(entry: bytes) -> bytes:
    """One entry as it sits in a bundle: its length, then its bytes."""
    return len(entry).to_bytes(LENGTH_BYTES, "big") + entry


def pack(entries: Iterable[bytes]) -> bytes:
    return b"".join([frame(e) for e in entries])


def unpack(blob: bytes, count: int) -> list[bytes]:
    out: list[bytes] = []
    at = 0
    for i in range(count):
        end = at + LENGTH_BYTES
        if end > len(blob):
            raise BundleError(f"bundle ends before entry {i} of {count}", entry=i, count=count, size=len(blob))
        n = int.from_bytes(blob[at:end], "big")
        if end + n > len(blob):
            raise BundleError(f"entry {i} of the bundle runs past its end", entry=i, length=n, size=len(blob))
        out.append(blob[end : end + n])
        at = end + n
    if at != len(blob):
        raise BundleError(
            f"bundle holds {len(blob) - at} bytes after its {count} entries", extra=len(blob) - at, count=count
        )
    return out


def split_hashes(blob: bytes, count: int) -> list[bytes]:
    if len(blob) != HASH_SIZE * count:
        raise BundleError(
            f"bundle holds {len(blob)} bytes of leaf hashes for {count} entries",
            size=len(blob),
            expected=HASH_SIZE * count,
        )
    return [blob[i : i + HASH_SIZE] for i in range(0, len(blob), HASH_SIZE)]


def spans(start: int, end: int, tile_height: int) -> Iterator[tuple[int, int]]:
    """[start, end) cut at every multiple of 2^tile_height: one bundle per piece."""
    width = 1 << tile_height
    while start < end:
        stop = min(end, (start // width + 1) * width)
        yield start, stop
        start = stop
