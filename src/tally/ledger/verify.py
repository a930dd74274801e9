"""Full verification of a stored log (`tally ledger verify`).

Recomputes every leaf from the stored entry bytes and every stored node from the leaves and compares each with
what is stored; checks that bundles run in order without gaps or overlaps and never cross a tile; checks every
checkpoint's signature, that checkpoints only grow and are consistent with each other and with the entries, and
that the newest checkpoint is not older than the one last written to the witness file outside the database. The
first problem found stops the check and names the first bad index.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select, text
from sqlalchemy.exc import DatabaseError

from tally.config.errors import TallyError
from tally.ledger import bundles, merkle
from tally.ledger.events import LedgerFormatError, decode_entry
from tally.ledger.log import Ledger
from tally.ledger.notes import Checkpoint, NoteError, open_checkpoint
from tally.ledger.tables import LedgerBundle, LedgerCheckpoint, LedgerNode, LedgerState, node_id, node_range

CHUNK = 64  # bundles per read

_NODES = text("SELECT id, hash FROM ledger_nodes WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))


class VerificationError(TallyError):
    """The stored log does not verify. `index` is the first bad index (None where no index applies); `reason` is a
    short stable code; the message and `values` say what was stored and what was computed (sizes, indexes, base64
    hashes). The server's own data is at fault, so the kind is internal.

    Reasons: unreadable, entry_missing, bundle_overlap, bundle_across_tile, bundle_malformed, entry_malformed,
    sequence_mismatch, leaf_mismatch, node_mismatch, size_mismatch, stray_nodes, frontier_mismatch,
    checkpoint_invalid, checkpoint_row_mismatch, checkpoint_beyond_log, checkpoint_root_mismatch, checkpoint_shrinks,
    checkpoints_inconsistent, witness_invalid, witness_beyond_log, witness_rolled_back, witness_root_mismatch.
    """

    kind = "internal"

    def __init__(self, index: int | None, message: str, *, reason: str, **values: Any) -> None:
        self.index = index
        self.reason = reason
        where = f" at index {index}" if index is not None else ""
        super().__init__(f"ledger verification failed{where}: {message}", index=index, **values)


@dataclass(frozen=True)
class VerifyReport:
    size: int
    nodes: int
    checkpoints: int
    root: bytes


def verify_ledger(ledger: Ledger, progress: Callable[[int, int], None] | None = None) -> VerifyReport:
    try:
        return _verify(ledger, progress)
    except DatabaseError as exc:
        raise VerificationError(None, f"the database cannot be read: {exc.orig}", reason="unreadable") from exc


def _verify(ledger: Ledger, progress: Callable[[int, int], None] | None) -> VerifyReport:
    height = ledger.tile_height
    with ledger.store.read() as s:
        size, stored_frontier = s.execute(select(LedgerState.size, LedgerState.frontier)).one()
        checkpoints = list(s.execute(select(LedgerCheckpoint).order_by(LedgerCheckpoint.id)).scalars())
        witness = _read_witness(ledger)
        wanted_roots = {c.size for c in checkpoints} | ({witness.size} if witness else set())
        wanted = sorted(wanted_roots)
        roots: dict[int, bytes] = {0: merkle.EMPTY_ROOT}
        stack: list[bytes] = []
        expected, last_row = 0, -1
        node_ids: set[int] = set()
        while True:
            rows = s.execute(
                select(LedgerBundle.seq, LedgerBundle.entry_count, LedgerBundle.leaf_hashes, LedgerBundle.entries)
                .where(LedgerBundle.seq > last_row)
                .order_by(LedgerBundle.seq)
                .limit(CHUNK)
            ).all()
            if not rows:
                break
            computed: dict[int, bytes] = {}
            for seq, count, leaf_blob, blob in rows:
                leaves = _check_bundle(seq, count, bytes(leaf_blob), bytes(blob), expected, height)
                # Cut at checkpoint sizes inside the bundle so their roots can be taken on the way.
                inside = wanted[bisect.bisect_right(wanted, seq) : bisect.bisect_left(wanted, seq + count)]
                cuts = [*inside, seq + count]
                at = seq
                for cut in cuts:
                    stack, done = merkle.extend(stack, at, leaves[at - seq : cut - seq], min_level=height)
                    computed.update((node_id(level, index), h) for level, index, h in done)
                    at = cut
                    if cut in wanted_roots:
                        roots[cut] = merkle.fold_pieces(stack)
                expected, last_row = seq + count, seq
            if computed:
                stored: dict[int, bytes] = dict(s.execute(_NODES, {"ids": list(computed)}).tuples().all())
                for nid in sorted(computed, key=lambda n: node_range(n)[1]):
                    got = stored.get(nid)
                    if got is None or bytes(got) != computed[nid]:
                        first, end = node_range(nid)
                        stored_b64 = merkle.b64(bytes(got)) if got is not None else None
                        raise VerificationError(
                            first,
                            f"the stored node over leaves [{first}, {end}) is wrong (stored "
                            f"{stored_b64 or 'nothing'}, computed {merkle.b64(computed[nid])})",
                            reason="node_mismatch",
                            start=first,
                            end=end,
                            stored=stored_b64,
                            computed=merkle.b64(computed[nid]),
                        )
                node_ids.update(computed)
            if progress:
                progress(expected, size)
        if expected != size:
            if expected < size:
                raise VerificationError(
                    expected,
                    f"the log's size is {size} but entries end at {expected}",
                    reason="size_mismatch",
                    size=size,
                    entries=expected,
                )
            raise VerificationError(
                size,
                f"entries run past the log's recorded size {size} (to {expected})",
                reason="size_mismatch",
                size=size,
                entries=expected,
            )
        latest = _check_checkpoints(ledger, checkpoints, roots, size)
        if witness is not None:
            _check_witness(ledger, witness, latest, roots, size)
        _check_frontier(size, bytes(stored_frontier), stack)
        extra = [nid for (nid,) in s.execute(select(LedgerNode.id)) if nid not in node_ids]
        if extra:
            low = min(node_range(nid)[0] for nid in extra)
            raise VerificationError(
                low,
                f"{len(extra)} stored nodes are not nodes of the log's tree",
                reason="stray_nodes",
                count=len(extra),
            )
        return VerifyReport(size, len(node_ids), len(checkpoints), merkle.fold_pieces(stack) if stack else roots[0])


def _check_frontier(size: int, stored: bytes, stack: list[bytes]) -> None:
    """The head's stored frontier is what the next append builds on: it must be the recomputed one."""
    if stored == b"".join(stack):
        return
    pieces = merkle.perfect_pieces(0, size)
    for (start, end), h in zip(pieces, stack, strict=True):
        got = stored[: bundles.HASH_SIZE]
        if got != h:
            raise VerificationError(
                start,
                f"the stored frontier's subtree over leaves [{start}, {end}) is wrong (stored {merkle.b64(got)}, "
                f"computed {merkle.b64(h)})",
                reason="frontier_mismatch",
                start=start,
                end=end,
                stored=merkle.b64(got),
                computed=merkle.b64(h),
            )
        stored = stored[bundles.HASH_SIZE :]
    raise VerificationError(
        size,
        f"the stored frontier holds hashes beyond the log's head ({len(stored)} bytes more than {len(pieces)} hashes)",
        reason="frontier_mismatch",
        extra=len(stored),
        expected=len(pieces),
    )


def _check_bundle(seq: int, count: int, leaf_blob: bytes, blob: bytes, expected: int, height: int) -> list[bytes]:
    """The leaf hashes of one stored bundle, after checking it holds entries [expected, expected + count)."""
    if seq < expected:
        raise VerificationError(
            seq,
            f"the bundle at {seq} overlaps entries stored before it (up to {expected - 1})",
            reason="bundle_overlap",
            seq=seq,
            expected=expected,
        )
    if seq > expected:
        raise VerificationError(
            expected,
            f"entry {expected} is missing (next stored entry is {seq})",
            reason="entry_missing",
            expected=expected,
            seq=seq,
        )
    if count < 1 or seq >> height != (seq + count - 1) >> height:
        raise VerificationError(
            seq,
            f"the bundle at {seq} holds {count} entries across a tile boundary",
            reason="bundle_across_tile",
            seq=seq,
            count=count,
            tile_height=height,
        )
    try:
        bodies = bundles.unpack(blob, count)
        stored = bundles.split_hashes(leaf_blob, count)
    except bundles.BundleError as exc:
        raise VerificationError(
            seq, f"the bundle at {seq} is malformed: {exc}", reason="bundle_malformed", seq=seq, **exc.values
        ) from exc
    leaves = []
    for i, (body, stored_leaf) in enumerate(zip(bodies, stored, strict=True)):
        try:
            entry = decode_entry(body)
        except LedgerFormatError as exc:
            raise VerificationError(seq + i, str(exc), reason="entry_malformed") from exc
        if entry.seq != seq + i:
            raise VerificationError(
                seq + i,
                f"position {seq + i} holds the entry with sequence number {entry.seq}",
                reason="sequence_mismatch",
                expected=seq + i,
                got=entry.seq,
            )
        leaf = merkle.leaf_hash(body)
        if leaf != stored_leaf:
            raise VerificationError(
                seq + i,
                f"the stored leaf hash does not match the entry bytes (stored {merkle.b64(stored_leaf)}, computed "
                f"{merkle.b64(leaf)})",
                reason="leaf_mismatch",
                stored=merkle.b64(stored_leaf),
                computed=merkle.b64(leaf),
            )
        leaves.append(leaf)
    return leaves


def _check_checkpoints(
    ledger: Ledger, checkpoints: list[LedgerCheckpoint], roots: dict[int, bytes], size: int
) -> Checkpoint | None:
    verifier = ledger.signer.verifier
    previous = None
    for row in checkpoints:
        try:
            cp = open_checkpoint(row.note, verifier, origin=ledger.origin)
        except NoteError as exc:
            raise VerificationError(
                row.size, f"checkpoint at size {row.size}: {exc}", reason="checkpoint_invalid", size=row.size
            ) from exc
        if (cp.size, cp.root) != (row.size, bytes(row.root)):
            raise VerificationError(
                row.size,
                f"checkpoint row at size {row.size} differs from its signed note (size {cp.size}, root "
                f"{merkle.b64(cp.root)})",
                reason="checkpoint_row_mismatch",
                size=row.size,
                root=merkle.b64(bytes(row.root)),
                signed_size=cp.size,
                signed_root=merkle.b64(cp.root),
            )
        if cp.size > size:
            raise VerificationError(
                size,
                f"a signed checkpoint covers {cp.size} entries but the log has {size}",
                reason="checkpoint_beyond_log",
                checkpoint_size=cp.size,
                size=size,
            )
        if cp.root != roots[cp.size]:
            low = previous.size if previous else 0
            raise VerificationError(
                low,
                f"entries [{low}, {cp.size}) do not match the checkpoint signed at size {cp.size} (signed root "
                f"{merkle.b64(cp.root)}, computed {merkle.b64(roots[cp.size])})",
                reason="checkpoint_root_mismatch",
                size=cp.size,
                expected=merkle.b64(cp.root),
                computed=merkle.b64(roots[cp.size]),
            )
        if previous is not None:
            if cp.size < previous.size:
                raise VerificationError(
                    cp.size,
                    f"checkpoint sizes go back from {previous.size} to {cp.size}",
                    reason="checkpoint_shrinks",
                    previous_size=previous.size,
                    size=cp.size,
                )
            if cp.size > previous.size:
                proof = ledger.consistency_proof(previous.size, cp.size)
                try:
                    merkle.verify_consistency(previous.size, cp.size, previous.root, cp.root, proof)
                except merkle.ProofError as exc:
                    raise VerificationError(
                        previous.size,
                        f"checkpoints {previous.size} -> {cp.size}: {exc}",
                        reason="checkpoints_inconsistent",
                        proof_reason=exc.reason,
                        **exc.values,
                    ) from exc
        previous = cp
    return previous


def _read_witness(ledger: Ledger) -> Checkpoint | None:
    path = ledger.witness_path
    if path is None or not path.exists():
        return None
    try:
        return open_checkpoint(path.read_text(encoding="utf-8"), ledger.signer.verifier, origin=ledger.origin)
    except NoteError as exc:
        raise VerificationError(None, f"witness checkpoint {path}: {exc}", reason="witness_invalid") from exc


def _check_witness(
    ledger: Ledger, seen: Checkpoint, latest: Checkpoint | None, roots: dict[int, bytes], size: int
) -> None:
    """The witness file holds the last checkpoint this installation signed; the database may not be behind it."""
    latest_size = latest.size if latest else 0
    if seen.size > size:
        raise VerificationError(
            size,
            f"entries were cut: {ledger.witness_path} holds a checkpoint of size {seen.size}, the log has {size}",
            reason="witness_beyond_log",
            witness_size=seen.size,
            size=size,
        )
    if seen.size > latest_size:
        raise VerificationError(
            latest_size,
            f"checkpoints were rolled back: {ledger.witness_path} holds a signed checkpoint of size {seen.size}, "
            f"the database's newest is of size {latest_size}",
            reason="witness_rolled_back",
            witness_size=seen.size,
            checkpoint_size=latest_size,
        )
    if roots[seen.size] != seen.root:
        raise VerificationError(
            None,
            f"entries below {seen.size} do not match the witness checkpoint of that size (signed root "
            f"{merkle.b64(seen.root)}, computed {merkle.b64(roots[seen.size])})",
            reason="witness_root_mismatch",
            size=seen.size,
            expected=merkle.b64(seen.root),
            computed=merkle.b64(roots[seen.size]),
        )
