"""Ledger tables.

Entries are stored in bundles, like the entry bundles of C2SP tiled logs: a row holds a run of consecutive
entries (their leaf hashes and their bytes) that never crosses a multiple of 2^tile_height. A row is written once
and never changed; a batch of k entries is about k / 2^tile_height rows. Hashes of aligned perfect subtrees of
height >= tile_height sit in `ledger_nodes`; smaller ones are recomputed from the leaf hashes of one tile.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base

# INTEGER PRIMARY KEY on SQLite makes the column the rowid: no second index to maintain.
RowId = BigInteger().with_variant(Integer(), "sqlite")

NODE_LEVEL_SHIFT = 48
DEFAULT_TILE_HEIGHT = 8


def node_id(level: int, index: int) -> int:
    """Key of the perfect subtree of height `level` covering leaves [index << level, (index + 1) << level)."""
    return (level << NODE_LEVEL_SHIFT) | index


def node_range(nid: int) -> tuple[int, int]:
    """The leaves [start, end) that node `nid` covers."""
    level, index = nid >> NODE_LEVEL_SHIFT, nid & ((1 << NODE_LEVEL_SHIFT) - 1)
    return index << level, (index + 1) << level


class LedgerBundle(Base):
    """Entries [seq, seq + entry_count): leaf hashes (32 bytes each) and length-prefixed entry bytes."""

    __tablename__ = "ledger_bundles"

    seq: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=False)
    entry_count: Mapped[int] = mapped_column(Integer)
    leaf_hashes: Mapped[bytes] = mapped_column(LargeBinary)
    entries: Mapped[bytes] = mapped_column(LargeBinary)


class LedgerEntryType(Base):
    """Which entries carry each event type, so a reader pages through one type's entries without reading the others
    (the studio's ledger page). Derived from the bundles and written in the same transaction as they are."""

    __tablename__ = "ledger_entry_types"

    type: Mapped[str] = mapped_column(String(96), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)


class LedgerNode(Base):
    __tablename__ = "ledger_nodes"

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32))


class LedgerCheckpoint(Base):
    __tablename__ = "ledger_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    size: Mapped[int] = mapped_column(BigInteger, unique=True)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))


class LedgerState(Base):
    """One row: the committed tree size, the head's frontier and the log's tile height (fixed at creation).

    `frontier` holds the hashes of the perfect subtrees that make up the tree of `size` leaves (largest first), so
    an append and the current root need no other read. Appends bump the size first, which takes the write lock on
    every backend, and write the new frontier in the same transaction."""

    __tablename__ = "ledger_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    tile_height: Mapped[int] = mapped_column(Integer, default=DEFAULT_TILE_HEIGHT)
    frontier: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
