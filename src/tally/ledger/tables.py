"""Ledger tables. Leaf hashes sit beside their entries; internal nodes (level >= 1) in `ledger_nodes`."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base

# INTEGER PRIMARY KEY on SQLite makes the column the rowid: no second index to maintain.
RowId = BigInteger().with_variant(Integer(), "sqlite")

NODE_LEVEL_SHIFT = 48


def node_id(level: int, index: int) -> int:
    """Key of the perfect subtree of height `level` covering leaves [index << level, (index + 1) << level)."""
    return (level << NODE_LEVEL_SHIFT) | index


class LedgerEntry(Base):
    __tablename__ = "ledger_entries"

    seq: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    type: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(256))
    body: Mapped[bytes] = mapped_column(LargeBinary)


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
    """One row: the committed tree size. Appends bump it first, which takes the write lock on every backend."""

    __tablename__ = "ledger_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
