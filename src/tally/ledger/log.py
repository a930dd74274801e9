"""The Merkle log over the database: append inside the caller's transaction, O(log n) roots and proofs.

Entries sit in bundles of at most 2^tile_height consecutive entries that never cross a multiple of 2^tile_height
(see `tally.ledger.tables`). The hash of every aligned perfect subtree of height >= tile_height is stored when it
completes; a smaller one lies inside one tile and is recomputed from that tile's leaf hashes (at most
2^tile_height - 1 hashes). So the root of any size and any proof need the O(log n) perfect pieces that
`tally.ledger.merkle` names: one indexed query for the stored nodes and one per tile for the small pieces.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, overload

from sqlalchemy import bindparam, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.ledger import bundles, merkle
from tally.ledger.events import Event, LogCreated, encode_entries, now_ts
from tally.ledger.notes import Checkpoint, Signer
from tally.ledger.tables import DEFAULT_TILE_HEIGHT, LedgerCheckpoint, LedgerEntryType, LedgerState, node_id
from tally.store import Store


class LedgerError(TallyError, RuntimeError):
    """The stored log is inconsistent with itself: the server's own data is at fault."""

    kind = "internal"


class LedgerLimitError(TallyError, ValueError):
    """A request exceeds a configured ledger limit (`limit` and the requested `size` are in `values`)."""

    kind = "limit"


class EntryNotFoundError(TallyError, KeyError):
    """No entry at that sequence number (a KeyError too, for callers that look entries up like a mapping)."""

    kind = "not_found"

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class Appended(NamedTuple):
    seq: int
    leaf_hash: bytes


class AppendedBatch(Sequence[Appended]):
    """What `append_batch` returns: one Appended per event, made when asked for (a batch may be 10^5 long)."""

    def __init__(self, start: int, leaves: list[bytes]) -> None:
        self.start, self.leaves = start, leaves

    def __len__(self) -> int:
        return len(self.leaves)

    @overload
    def __getitem__(self, i: int) -> Appended: ...
    @overload
    def __getitem__(self, i: slice) -> list[Appended]: ...
    def __getitem__(self, i: int | slice) -> Appended | list[Appended]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        k = range(len(self.leaves))[i]  # negative indices and bounds as a list has them
        return Appended(self.start + k, self.leaves[k])


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root: bytes
    note: str
    created_at: str


_NODES = text("SELECT id, hash FROM ledger_nodes WHERE id IN :ids").bindparams(bindparam("ids", expanding=True))
# Bundles never cross a tile boundary, so every bundle holding an entry of [start, end) begins at or after the
# start of start's tile: the primary key bounds the scan on both sides.
_ENTRIES = text(
    "SELECT seq, entry_count, entries FROM ledger_bundles WHERE seq >= :tile_start AND seq < :end ORDER BY seq"
)
_LEAF_HASHES = text(
    "SELECT seq, entry_count, leaf_hashes FROM ledger_bundles WHERE seq >= :tile_start AND seq < :end ORDER BY seq"
)
_BUNDLE_OF = text(
    "SELECT seq, entry_count, entries FROM ledger_bundles "
    "WHERE seq <= :seq AND seq >= :tile_start ORDER BY seq DESC LIMIT 1"
)

Reader = Session | Connection


def _level(size: int) -> int:
    return size.bit_length() - 1


class _MissingPiece(LookupError):
    pass


def read_leaf_hashes(conn: Reader, start: int, end: int, tile_height: int) -> list[bytes]:
    """Leaf hashes of entries [start, end); raises _MissingPiece((start, end)) unless all are stored."""
    rows = conn.execute(_LEAF_HASHES, {"tile_start": start >> tile_height << tile_height, "end": end}).all()
    parts: list[bytes] = []
    at, first = start, start
    for seq, count, blob in rows:  # a tile of single appends is 255 rows: keep this loop bare
        if seq + count <= at:
            continue
        if seq > at:
            break
        if not parts:
            first = seq
        parts.append(blob)
        at = seq + count
    if at < end:
        raise _MissingPiece((start, end))
    joined = b"".join(parts)
    if len(joined) != bundles.HASH_SIZE * (at - first):
        raise LedgerError(
            f"the bundles holding entries [{first}, {at}) have leaf hashes of the wrong length",
            start=first,
            end=at,
            got=len(joined),
            expected=bundles.HASH_SIZE * (at - first),
        )
    size = bundles.HASH_SIZE
    return [joined[i : i + size] for i in range((start - first) * size, (end - first) * size, size)]


def fetch_pieces(conn: Reader, pieces: list[merkle.Range], tile_height: int) -> dict[merkle.Range, bytes]:
    """Hashes of aligned perfect subtrees: stored nodes in one query, smaller pieces from their tile's leaves."""
    tile = 1 << tile_height
    nodes = {node_id(_level(e - s), s >> _level(e - s)): (s, e) for s, e in pieces if e - s >= tile}
    out: dict[merkle.Range, bytes] = {}
    if nodes:
        for key, h in conn.execute(_NODES, {"ids": list(nodes)}):
            out[nodes[key]] = bytes(h)
    by_tile: dict[int, list[merkle.Range]] = {}
    for s, e in pieces:
        if e - s < tile:
            by_tile.setdefault(s >> tile_height, []).append((s, e))
    for small in by_tile.values():
        lo, hi = min(s for s, _ in small), max(e for _, e in small)
        leaves = read_leaf_hashes(conn, lo, hi, tile_height)
        for s, e in small:
            out[(s, e)] = merkle.root_of(leaves[s - lo : e - lo])
    missing = [p for p in pieces if p not in out]
    if missing:
        raise _MissingPiece(missing[0])
    return out


def _frontier(size: int, blob: bytes) -> list[bytes]:
    """The stored frontier of a tree of `size` leaves, as a stack of hashes (largest piece first)."""
    if len(blob) != bundles.HASH_SIZE * size.bit_count():
        raise LedgerError(
            f"the stored frontier holds {len(blob)} bytes; a tree of {size} needs {size.bit_count()} hashes",
            size=size,
            got=len(blob),
            expected=bundles.HASH_SIZE * size.bit_count(),
        )
    return bundles.split_hashes(blob, size.bit_count())


class Ledger:
    """One log: its database, signing key and origin."""

    def __init__(
        self,
        store: Store,
        signer: Signer,
        *,
        origin: str,
        witness_path: Path | None = None,
        max_batch: int = 100_000,
        tile_height: int = DEFAULT_TILE_HEIGHT,
    ) -> None:
        if not 1 <= tile_height <= 16:
            raise ValueError(f"tile_height must be 1..16, got {tile_height}")
        self.store = store
        self.signer = signer
        self.origin = origin
        self.witness_path = witness_path
        self.max_batch = max_batch
        with store.transaction() as session:
            state = session.get(LedgerState, 1)
            if state is None:
                raise LedgerError("the database has no ledger_state row; run the store's migrations")
            if state.size == 0:
                state.tile_height = tile_height  # a new log takes the configured height; an old one keeps its own
                session.flush()
            self.tile_height: int = state.tile_height
            if state.size == 0:
                created = LogCreated(origin=origin, verifier_key=signer.verifier.encode())
                self.append(session, created, actor="ledger")

    def _session(self, session: Session | None) -> AbstractContextManager[Session]:
        return nullcontext(session) if session is not None else self.store.read()

    def _reader(self, session: Session | None) -> AbstractContextManager[Reader]:
        """Hot read paths use a bare connection: bundles and nodes never change once written, and the size only
        grows, so queries need not share a snapshot."""
        return nullcontext(session) if session is not None else self.store.connect()

    # ---- writing -------------------------------------------------------------------------------------------

    def append(self, session: Session, event: Event, *, actor: str) -> Appended:
        """Append one event inside `session`'s transaction; it commits or rolls back with the caller's work."""
        return self.append_batch(session, [(event, actor)])[0]

    def append_batch(self, session: Session, items: Sequence[tuple[Event, str]]) -> Sequence[Appended]:
        """Append events (each with its actor) in order, inside `session`'s transaction."""
        if not items:
            return AppendedBatch(0, [])
        if len(items) > self.max_batch:
            raise LedgerLimitError(
                f"batch of {len(items)} entries exceeds ledger.max_batch={self.max_batch}",
                limit=self.max_batch,
                size=len(items),
            )
        count = len(items)
        # Appenders run one at a time: on SQLite the transaction holds the database's write lock; on PostgreSQL this
        # takes the advisory write lock unless the transaction holds it already (`Store.transaction()` takes it
        # before anything else, so write transactions never deadlock). The size bump below would lock the state
        # row too, but the advisory lock also covers what the caller read before appending.
        self.store.lock_for_write(session)
        # Plain DBAPI statements: the ORM's per-statement bookkeeping is a large part of a single append.
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        new_size, frontier = conn.exec_driver_sql(
            f"UPDATE ledger_state SET size = size + {mark} WHERE id = 1 RETURNING size, frontier", (count,)
        ).one()
        start = new_size - count
        stack = _frontier(start, bytes(frontier))
        ts = now_ts()  # one transaction, one commit time
        leaves, framed = [], []
        sha256 = hashlib.sha256
        for body in encode_entries(start, ts, items):
            # merkle.leaf_hash and bundles.frame, inlined: this loop is most of an append's cost. The framed copy
            # lets the encoder's buffer be freed at once.
            leaves.append(sha256(b"\x00" + body).digest())
            framed.append(len(body).to_bytes(bundles.LENGTH_BYTES, "big") + body)
        stack, completed = merkle.extend(stack, start, leaves, min_level=self.tile_height)
        rows = [
            (a, b - a, b"".join(leaves[a - start : b - start]), b"".join(framed[a - start : b - start]))
            for a, b in bundles.spans(start, new_size, self.tile_height)
        ]
        conn.exec_driver_sql(f"UPDATE ledger_state SET frontier = {mark} WHERE id = 1", (b"".join(stack),))
        conn.exec_driver_sql(
            f"INSERT INTO ledger_bundles (seq, entry_count, leaf_hashes, entries) VALUES ({', '.join([mark] * 4)})",
            rows,
        )
        if completed:
            nodes = [(node_id(level, index), h) for level, index, h in completed]
            conn.exec_driver_sql(f"INSERT INTO ledger_nodes (id, hash) VALUES ({mark}, {mark})", nodes)
        conn.exec_driver_sql(
            f"INSERT INTO ledger_entry_types (type, seq) VALUES ({mark}, {mark})",
            [(event.event_type, start + i) for i, (event, _) in enumerate(items)],
        )
        return AppendedBatch(start, leaves)

    # ---- reading -------------------------------------------------------------------------------------------

    def size(self, session: Session | None = None) -> int:
        with self._reader(session) as conn:
            return self._size(conn)

    @staticmethod
    def _size(conn: Reader) -> int:
        return conn.execute(select(LedgerState.size).where(LedgerState.id == 1)).scalar_one()

    def _resolve(self, conn: Reader, size: int, ranges: list[merkle.Range]) -> list[bytes]:
        """MTHs of `ranges` within a tree of `size`; a piece that is not stored means the size is too large."""
        try:
            return merkle.resolve_ranges(ranges, lambda pieces: fetch_pieces(conn, pieces, self.tile_height))
        except _MissingPiece as exc:
            current = self._size(conn)
            if size > current:
                raise merkle.ProofError(
                    f"tree size {size} is outside 0..{current}", reason="size_out_of_range", size=size, current=current
                ) from None
            start, end = exc.args[0]
            raise LedgerError(
                f"stored tree is missing the hash of leaves [{start}, {end})", start=start, end=end
            ) from None

    def root(self, size: int | None = None, session: Session | None = None) -> bytes:
        with self._reader(session) as conn:
            if size is None:  # the head: its frontier is stored
                size, frontier = conn.execute(select(LedgerState.size, LedgerState.frontier)).one()
                return merkle.fold_pieces(_frontier(size, bytes(frontier))) if size else merkle.EMPTY_ROOT
            if size < 0:
                raise merkle.ProofError(f"tree size {size} is negative", reason="size_out_of_range", size=size)
            return self._resolve(conn, size, [(0, size)])[0] if size else merkle.EMPTY_ROOT

    def entry(self, seq: int, session: Session | None = None) -> bytes:
        with self._reader(session) as conn:
            tile_start = max(seq, 0) >> self.tile_height << self.tile_height
            row = conn.execute(_BUNDLE_OF, {"seq": seq, "tile_start": tile_start}).first()
            if row is None or not row[0] <= seq < row[0] + row[1]:
                size = self._size(conn)
                raise EntryNotFoundError(
                    f"no ledger entry {seq} (the log has {size} {'entry' if size == 1 else 'entries'})",
                    param="seq", seq=seq, size=size,
                )  # fmt: skip
            return bundles.unpack(bytes(row[2]), row[1])[seq - row[0]]

    def entries(self, start: int, limit: int, session: Session | None = None) -> list[bytes]:
        """Up to `limit` consecutive entries from `start`, stopping at a gap."""
        out: list[bytes] = []
        start = at = max(start, 0)
        end = start + max(limit, 0)
        with self._reader(session) as conn:
            tile_start = start >> self.tile_height << self.tile_height
            for seq, count, blob in conn.execute(_ENTRIES, {"tile_start": tile_start, "end": end}):
                if seq + count <= at:
                    continue
                if seq > at:
                    break
                out.extend(bundles.unpack(bytes(blob), count)[at - seq :])
                at = seq + count
        return out[: end - start]

    def recent(
        self,
        *,
        event_type: str | None = None,
        before: int | None = None,
        limit: int = 50,
        session: Session | None = None,
    ) -> list[bytes]:
        """Up to `limit` entries below seq `before` (default: the head), newest first, of one event type if given:
        keyset paging, so a page costs the same at any depth of the log."""
        limit = max(limit, 0)
        with self._reader(session) as conn:
            end = self._size(conn) if before is None else min(max(before, 0), self._size(conn))
            if event_type is None:
                start = max(end - limit, 0)
                return self.entries(start, end - start, session)[::-1] if end > start else []
            seqs = list(
                conn.execute(
                    select(LedgerEntryType.seq)
                    .where(LedgerEntryType.type == event_type, LedgerEntryType.seq < end)
                    .order_by(LedgerEntryType.seq.desc())
                    .limit(limit)
                ).scalars()
            )
        # one read per tile the entries fall in (a page of a common type is a tile or two; a rare type, a few more)
        by_tile: dict[int, list[int]] = {}
        for seq in seqs:
            by_tile.setdefault(seq >> self.tile_height, []).append(seq)
        found: dict[int, bytes] = {}
        for group in by_tile.values():
            low, high = min(group), max(group)
            run = self.entries(low, high - low + 1, session)
            found.update((seq, run[seq - low]) for seq in group if seq - low < len(run))
        return [found[seq] for seq in seqs if seq in found]

    def inclusion_proof(self, index: int, size: int | None = None, session: Session | None = None) -> list[bytes]:
        with self._reader(session) as conn:
            size = self._size(conn) if size is None else size
            if not 0 <= index < size:
                raise merkle.ProofError(
                    f"index {index} is not below tree size {size}", reason="index_out_of_range", index=index, size=size
                )
            return self._resolve(conn, size, merkle.inclusion_ranges(index, size))

    def consistency_proof(
        self, old_size: int, new_size: int | None = None, session: Session | None = None
    ) -> list[bytes]:
        with self._reader(session) as conn:
            new_size = self._size(conn) if new_size is None else new_size
            if not 0 < old_size <= new_size:
                raise merkle.ProofError(
                    f"no consistency proof from size {old_size} to size {new_size}",
                    reason="size_out_of_range",
                    old_size=old_size,
                    new_size=new_size,
                )
            return self._resolve(conn, new_size, merkle.consistency_ranges(old_size, new_size))

    # ---- checkpoints ---------------------------------------------------------------------------------------

    def latest_checkpoint(self, session: Session | None = None) -> SignedCheckpoint | None:
        with self._session(session) as s:
            row = s.execute(select(LedgerCheckpoint).order_by(LedgerCheckpoint.id.desc()).limit(1)).scalar()
            return _signed(row) if row else None

    def checkpoint_covering(self, size: int, session: Session | None = None) -> SignedCheckpoint | None:
        """The oldest checkpoint whose tree holds the first `size` entries."""
        with self._session(session) as s:
            row = s.execute(
                select(LedgerCheckpoint).where(LedgerCheckpoint.size >= size).order_by(LedgerCheckpoint.size).limit(1)
            ).scalar()
            return _signed(row) if row else None

    def checkpoint(self) -> SignedCheckpoint:
        """The signed checkpoint of the current head, signing a new one if the log has grown since the last."""
        with self.store.transaction() as s:
            size = self.size(s)
            latest = self.latest_checkpoint(s)
            if latest is not None and latest.size == size:
                return latest
            root = self.root(session=s)  # the head's root, from its stored frontier (the write lock holds the size)
            note = self.signer.sign(Checkpoint(self.origin, size, root).text())
            row = LedgerCheckpoint(size=size, root=root, note=note, created_at=now_ts())
            s.add(row)
            s.flush()
            signed = _signed(row)
        self._write_witness(signed.note, signed.size)
        return signed

    def _write_witness(self, note: str, size: int) -> None:
        """Keep the newest signed checkpoint outside the database. Threads and processes sign checkpoints at once, so
        the write is serialised by a lock file, goes through a temporary file of its own, and never replaces a
        checkpoint of a larger tree (a slower writer's older checkpoint would make the witness go backwards)."""
        if self.witness_path is None:
            return
        folder = self.witness_path.parent
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f".{self.witness_path.name}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if (_witness_size(self.witness_path) or -1) >= size:
                return
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{self.witness_path.name}.", suffix=".tmp")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(note)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.witness_path)


def _witness_size(path: Path) -> int | None:
    """The tree size of the checkpoint in the witness file (its note's second line), None when there is none."""
    try:
        return int(path.read_text(encoding="utf-8").split("\n")[1])
    except (OSError, ValueError, IndexError):
        return None


def _signed(row: LedgerCheckpoint) -> SignedCheckpoint:
    return SignedCheckpoint(row.size, bytes(row.root), row.note, row.created_at)
