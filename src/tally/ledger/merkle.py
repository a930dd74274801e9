"""RFC 9162 Merkle tree hashing, proofs and proof verification.

Hashes: leaf = SHA-256(0x00 || entry), node = SHA-256(0x01 || left || right). Proofs are described as lists of
subtree ranges [start, end); any store that can hash an aligned perfect subtree can then serve them with
O(log n) reads (see `tally.ledger.log`).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from tally.config.errors import TallyError

Range = tuple[int, int]
HASH_SIZE = 32


class ProofError(TallyError, ValueError):
    """A proof cannot be made as asked, or does not verify.

    `reason` is a short stable code for programs and tests; the message and `values` say what was expected and
    what was computed (sizes, indexes, base64 hashes), as transparency-dev/merkle does:

    - index_out_of_range: the index is not below the tree size (values: index, size)
    - size_out_of_range: a size is negative, too small for the operation, or the sizes are out of order
    - wrong_proof_size: the proof has more or fewer hashes than the sizes call for (values: got, expected)
    - wrong_hash_size: a hash is not 32 bytes (values: position, got, expected)
    - root_mismatch: the proof leads to another root (values: expected, computed; for consistency also `root`,
      "old" or "new")
    - wrong_stack_size: a frontier stack does not match its tree size (values: got, expected)
    """

    def __init__(self, message: str, *, reason: str, **values: Any) -> None:
        super().__init__(message, **values)
        self.reason = reason


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


EMPTY_ROOT = hashlib.sha256(b"").digest()


def split_point(n: int) -> int:
    """The largest power of two strictly smaller than n; RFC 9162 defines it only for n > 1."""
    if n < 2:
        raise ProofError(f"a tree of size {n} has no split point (needs size >= 2)", reason="size_out_of_range", size=n)
    return 1 << ((n - 1).bit_length() - 1)


def perfect_pieces(start: int, end: int) -> list[Range]:
    """The aligned perfect subtrees whose hashes determine MTH(D[start:end]), left to right."""
    if not 0 <= start <= end:
        raise ProofError(
            f"range [{start}, {end}) is not a range of leaves", reason="size_out_of_range", start=start, end=end
        )
    pieces: list[Range] = []
    while end - start > 0:
        size = end - start
        if size & (size - 1) == 0 and start % size == 0:
            pieces.append((start, end))
            break
        k = split_point(size)
        pieces.append((start, start + k))
        start += k
    return pieces


def fold_pieces(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its perfect pieces (as returned by `perfect_pieces`): fold from the right."""
    if not hashes:
        raise ProofError("no pieces to fold: an empty range has no pieces", reason="size_out_of_range", size=0)
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def extend(
    stack: Sequence[bytes], start: int, leaves: Sequence[bytes], min_level: int = 1
) -> tuple[list[bytes], list[tuple[int, int, bytes]]]:
    """Append `leaves` (indices start, start + 1, ...) to a tree of `start` leaves given by `stack`, the hashes of
    its perfect pieces (largest first, as `perfect_pieces(0, start)`). Returns the new tree's stack and the
    (level, index, hash) of every perfect subtree of level >= `min_level` that the new leaves complete.

    Works a level at a time, so each level is one comprehension of hashes rather than a Python step per leaf."""
    if start < 0:
        raise ProofError(f"tree size {start} is negative", reason="size_out_of_range", size=start)
    levels = _set_bits(start)
    if len(stack) != len(levels):
        raise ProofError(
            f"a tree of size {start} has {len(levels)} perfect pieces, but the stack holds {len(stack)} hashes",
            reason="wrong_stack_size",
            size=start,
            got=len(stack),
            expected=len(levels),
        )
    sha256 = hashlib.sha256
    old = dict(zip(levels, stack, strict=True))
    left: dict[int, bytes] = {}
    completed: list[tuple[int, int, bytes]] = []
    row, first, level = list(leaves), start, 0
    while row:
        if first & 1:  # the row's first node is a right child: its sibling is the old tree's piece at this level
            row.insert(0, old.pop(level))
            first -= 1
        if len(row) & 1:
            left[level] = row.pop()
        row = [sha256(b"\x01" + a + b).digest() for a, b in zip(row[0::2], row[1::2], strict=False)]  # node_hash
        first >>= 1
        level += 1
        if level >= min_level:
            completed.extend((level, first + i, h) for i, h in enumerate(row))
    pieces = old | left
    return [pieces[level] for level in _set_bits(start + len(leaves))], completed


def _set_bits(n: int) -> list[int]:
    """Levels of the perfect pieces of a tree of n leaves, largest first."""
    return [level for level in range(n.bit_length() - 1, -1, -1) if n >> level & 1]


def b64(digest: bytes) -> str:
    """Hashes travel as base64, as in signed notes."""
    return base64.b64encode(digest).decode()


def root_of(leaves: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes, O(n). Pairing bottom-up and carrying an odd last node up unchanged builds the same
    left-balanced tree as RFC 9162's split at the largest power of two."""
    if not leaves:
        return EMPTY_ROOT
    row = list(leaves)
    while len(row) > 1:
        odd = row[-1] if len(row) & 1 else None
        row = [node_hash(a, b) for a, b in zip(row[0::2], row[1::2], strict=False)]
        if odd is not None:
            row.append(odd)
    return row[0]


def _check_index(index: int, size: int) -> None:
    if not 0 <= index < size:
        raise ProofError(
            f"index {index} is outside a tree of size {size}",
            reason="index_out_of_range",
            index=index,
            size=size,
        )


def _check_sizes(old_size: int, new_size: int) -> None:
    if not 0 < old_size <= new_size:
        raise ProofError(
            f"no consistency proof from size {old_size} to size {new_size} (needs 0 < old size <= new size)",
            reason="size_out_of_range",
            old_size=old_size,
            new_size=new_size,
        )


def inclusion_proof_size(index: int, size: int) -> int:
    """How many hashes PATH(index, D[0:size]) holds: the levels where the paths to `index` and to the last leaf
    differ (inner) plus the left siblings above them (border), as in transparency-dev/merkle."""
    _check_index(index, size)
    inner = (index ^ (size - 1)).bit_length()
    return inner + (index >> inner).bit_count()


def consistency_proof_size(old_size: int, new_size: int) -> int:
    """How many hashes PROOF(old_size, D[0:new_size]) holds (0 for equal sizes)."""
    _check_sizes(old_size, new_size)
    if old_size == new_size:
        return 0
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    shift = (old_size & -old_size).bit_length() - 1  # the old tree's lowest perfect subtree is 2^shift leaves
    seed = 0 if old_size == 1 << shift else 1  # its root is in the proof unless the old tree is that subtree
    return seed + inner - shift + border


def inclusion_ranges(index: int, size: int) -> list[Range]:
    """Ranges whose MTHs form PATH(index, D[0:size]) of RFC 9162 section 2.1.3.1, leaf side first."""
    _check_index(index, size)
    out: list[Range] = []
    start, end = 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            start += k
    out.reverse()
    return out


def consistency_ranges(old_size: int, new_size: int) -> list[Range]:
    """Ranges whose MTHs form PROOF(old_size, D[0:new_size]) of RFC 9162 section 2.1.4.1."""
    _check_sizes(old_size, new_size)
    out: list[Range] = []
    m, start, end, complete = old_size, 0, new_size, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                out.append((start, end))
            break
        k = split_point(n)
        if m <= k:
            out.append((start + k, end))
            end = start + k
        else:
            out.append((start, start + k))
            m -= k
            start += k
            complete = False
    out.reverse()
    return out


def resolve_ranges(ranges: Iterable[Range], fetch: Callable[[list[Range]], dict[Range, bytes]]) -> list[bytes]:
    """MTH of each range, reading every perfect piece they need through one `fetch` call."""
    ranges = list(ranges)
    pieces = [perfect_pieces(s, e) for s, e in ranges]
    wanted = sorted({p for ps in pieces for p in ps})
    got = fetch(wanted) if wanted else {}
    return [fold_pieces([got[p] for p in ps]) for ps in pieces]


def _check_hashes(what: str, hashes: Sequence[bytes], offset: int = 0) -> None:
    for i, h in enumerate(hashes):
        if len(h) != HASH_SIZE:
            raise ProofError(
                f"{what} {i + offset} is {len(h)} bytes, expected {HASH_SIZE}",
                reason="wrong_hash_size",
                position=i + offset,
                got=len(h),
                expected=HASH_SIZE,
            )


def _check_root(computed: bytes, expected: bytes, tree: str | None = None) -> None:
    if computed != expected:
        which = f"{tree} " if tree else ""
        extra = {"root": tree} if tree else {}
        raise ProofError(
            f"computed {which}root {b64(computed)} does not match the expected {which}root {b64(expected)}",
            reason="root_mismatch",
            expected=b64(expected),
            computed=b64(computed),
            **extra,
        )


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 section 2.1.3.2. Raises ProofError unless `proof` shows `leaf` at `index` under `root`."""
    if not 0 <= index < size:
        raise ProofError(
            f"index {index} is not below tree size {size}", reason="index_out_of_range", index=index, size=size
        )
    expected = inclusion_proof_size(index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof for index {index} in tree size {size} has {len(proof)} hashes, expected {expected}",
            reason="wrong_proof_size",
            index=index,
            size=size,
            got=len(proof),
            expected=expected,
        )
    _check_hashes("leaf hash", [leaf])
    _check_hashes("proof hash", proof)
    fn, sn = index, size - 1
    r = leaf
    for p in proof:  # the length check above keeps sn > 0 here and brings it to 0 at the end
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    _check_root(r, root)


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 section 2.1.4.2. Raises ProofError unless the tree of `old_size` is a prefix of the new one."""
    if old_size < 1 or old_size > new_size:
        raise ProofError(
            f"sizes {old_size} -> {new_size} admit no consistency proof (needs 0 < old size <= new size)",
            reason="size_out_of_range",
            old_size=old_size,
            new_size=new_size,
        )
    expected = consistency_proof_size(old_size, new_size)
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof from size {old_size} to size {new_size} has {len(proof)} hashes, expected {expected}"
            + (" (proof between equal sizes must be empty)" if old_size == new_size else ""),
            reason="wrong_proof_size",
            old_size=old_size,
            new_size=new_size,
            got=len(proof),
            expected=expected,
        )
    _check_hashes("proof hash", proof)
    if old_size == new_size:
        _check_root(new_root, old_root)  # equal sizes with different roots
        return
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:  # the length check above keeps sn > 0 here and brings it to 0 at the end
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    _check_root(fr, old_root, "old")
    _check_root(sr, new_root, "new")
