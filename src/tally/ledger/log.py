"""The Merkle log over the database: append inside the caller's transaction, O(log n) roots and proofs.

Every aligned perfect subtree's hash is stored when it completes (leaves beside their entries, higher levels in
`ledger_nodes`), so the root of any size and any proof need only the O(log n) perfect pieces that
`tally.ledger.merkle` names, fetched in at most two indexed queries.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import bindparam, select, text, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from tally.ledger import merkle
from tally.ledger.events import Event, LogCreated, encode_entry, now_ts
from tally.ledger.notes import Checkpoint, Signer
from tally.ledger.tables import LedgerCheckpoint, LedgerEntry, LedgerState, node_id
from tally.store import Store


class LedgerError(RuntimeError):
    """The stored log is inconsistent with itself."""


class LedgerLimitError(ValueError):
    """A request exceeds a configured ledger limit."""


@dataclass(frozen=True)
class Appended:
    seq: int
    leaf_hash: bytes


@dataclass(frozen=True)
class SignedCheckpoint:
    size: int
    root: bytes
    note: str
    created_at: str


_PIECES = text(
    "SELECT seq, 0, leaf_hash FROM ledger_entries WHERE seq IN :leaves "
    "UNION ALL SELECT id, 1, hash FROM ledger_nodes WHERE id IN :nodes"
).bindparams(bindparam("leaves", expanding=True), bindparam("nodes", expanding=True))

Reader = Session | Connection


def _level(size: int) -> int:
    return size.bit_length() - 1


def fetch_pieces(conn: Reader, pieces: list[merkle.Range]) -> dict[merkle.Range, bytes]:
    """Hashes of aligned perfect subtrees, read from storage in one query."""
    leaves = [s for s, e in pieces if e - s == 1]
    nodes = {node_id(_level(e - s), s >> _level(e - s)): (s, e) for s, e in pieces if e - s > 1}
    out: dict[merkle.Range, bytes] = {}
    for key, is_node, h in conn.execute(_PIECES, {"leaves": leaves, "nodes": list(nodes)}):
        out[nodes[key] if is_node else (key, key + 1)] = bytes(h)
    missing = [p for p in pieces if p not in out]
    if missing:
        raise _MissingPiece(missing[0])
    return out


class _MissingPiece(LookupError):
    pass


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
    ) -> None:
        self.store = store
        self.signer = signer
        self.origin = origin
        self.witness_path = witness_path
        self.max_batch = max_batch
        with store.transaction() as session:
            if self.size(session) == 0:
                created = LogCreated(origin=origin, verifier_key=signer.verifier.encode())
                self.append(session, created, actor="ledger")

    def _session(self, session: Session | None) -> AbstractContextManager[Session]:
        return nullcontext(session) if session is not None else self.store.read()

    def _reader(self, session: Session | None) -> AbstractContextManager[Reader]:
        """Hot read paths use a bare connection: entries and nodes never change once written."""
        return nullcontext(session) if session is not None else self.store.engine.connect()

    # ---- writing -------------------------------------------------------------------------------------------

    def append(self, session: Session, event: Event, *, actor: str) -> Appended:
        """Append one event inside `session`'s transaction; it commits or rolls back with the caller's work."""
        return self.append_batch(session, [(event, actor)])[0]

    def append_batch(self, session: Session, items: Sequence[tuple[Event, str]]) -> list[Appended]:
        """Append events (each with its actor) in order, inside `session`'s transaction."""
        if not items:
            return []
        if len(items) > self.max_batch:
            raise LedgerLimitError(f"batch of {len(items)} entries exceeds ledger.max_batch={self.max_batch}")
        count = len(items)
        new_size = session.execute(
            update(LedgerState)
            .where(LedgerState.id == 1)
            .values(size=LedgerState.size + count)
            .returning(LedgerState.size)
        ).scalar_one()
        start = new_size - count
        frontier = merkle.perfect_pieces(0, start)
        hashes = fetch_pieces(session, frontier) if frontier else {}
        stack = [hashes[p] for p in frontier]
        ts = now_ts()  # one transaction, one commit time
        entries: list[tuple[int, bytes, str, str, bytes]] = []
        nodes: list[tuple[int, bytes]] = []
        out: list[Appended] = []
        for offset, (event, actor) in enumerate(items):
            seq = start + offset
            body = encode_entry(seq, ts, actor, event)
            h = merkle.leaf_hash(body)
            entries.append((seq, h, event.event_type, actor, body))
            out.append(Appended(seq, h))
            nodes.extend((node_id(level, pos), node) for level, pos, node in merkle.push_leaf(stack, seq, h))
        # Plain DBAPI executemany: the ORM's per-row bookkeeping would cost more than the hashing.
        conn = session.connection()
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            f"INSERT INTO ledger_entries (seq, leaf_hash, type, actor, body) VALUES ({', '.join([mark] * 5)})",
            entries,
        )
        if nodes:
            conn.exec_driver_sql(f"INSERT INTO ledger_nodes (id, hash) VALUES ({mark}, {mark})", nodes)
        return out

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
            return merkle.resolve_ranges(ranges, lambda pieces: fetch_pieces(conn, pieces))
        except _MissingPiece as exc:
            current = self._size(conn)
            if size > current:
                raise ValueError(f"tree size {size} is outside 0..{current}") from None
            start, end = exc.args[0]
            raise LedgerError(f"stored tree is missing the hash of leaves [{start}, {end})") from None

    def root(self, size: int | None = None, session: Session | None = None) -> bytes:
        with self._reader(session) as conn:
            size = self._size(conn) if size is None else size
            if size < 0:
                raise ValueError(f"tree size {size} is negative")
            return self._resolve(conn, size, [(0, size)])[0] if size else merkle.EMPTY_ROOT

    def entry(self, seq: int, session: Session | None = None) -> bytes:
        with self._reader(session) as conn:
            body = conn.execute(select(LedgerEntry.body).where(LedgerEntry.seq == seq)).scalar_one_or_none()
            if body is None:
                size = self._size(conn)
                raise KeyError(f"no ledger entry {seq} (the log has {size} {'entry' if size == 1 else 'entries'})")
            return bytes(body)

    def entries(self, start: int, limit: int, session: Session | None = None) -> list[bytes]:
        with self._reader(session) as conn:
            rows = conn.execute(
                select(LedgerEntry.body).where(LedgerEntry.seq >= start).order_by(LedgerEntry.seq).limit(limit)
            )
            return [bytes(b) for (b,) in rows]

    def inclusion_proof(self, index: int, size: int | None = None, session: Session | None = None) -> list[bytes]:
        with self._reader(session) as conn:
            size = self._size(conn) if size is None else size
            if not 0 <= index < size:
                raise ValueError(f"index {index} is not below tree size {size}")
            return self._resolve(conn, size, merkle.inclusion_ranges(index, size))

    def consistency_proof(
        self, old_size: int, new_size: int | None = None, session: Session | None = None
    ) -> list[bytes]:
        with self._reader(session) as conn:
            new_size = self._size(conn) if new_size is None else new_size
            if not 0 < old_size <= new_size:
                raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
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
            root = self.root(size, s)
            note = self.signer.sign(Checkpoint(self.origin, size, root).text())
            row = LedgerCheckpoint(size=size, root=root, note=note, created_at=now_ts())
            s.add(row)
            s.flush()
            signed = _signed(row)
        self._write_witness(signed.note)
        return signed

    def _write_witness(self, note: str) -> None:
        if self.witness_path is None:
            return
        self.witness_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.witness_path.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(note)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.witness_path)


def _signed(row: LedgerCheckpoint) -> SignedCheckpoint:
    return SignedCheckpoint(row.size, bytes(row.root), row.note, row.created_at)
