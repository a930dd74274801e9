"""Chain tables: what this installation deployed, sent and anchored, per network.

A network is `<chain id>/<genesis block hash>`, so two chains that share an id (the embedded chain and a local
anvil both use 31337) never mix. Every row is a cache of chain state plus the journal of transactions this
installation signed: a transaction is written here (with its raw bytes) before it is sent, so a crash between
sending and seeing its receipt is resolved by looking the hash up or re-sending the same bytes, never by signing a
second transaction for the same purpose.
"""

from __future__ import annotations

from typing import TypeVar

from sqlalchemy import BigInteger, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, Session, mapped_column

from tally.store import Base

NETWORK = String(100)
ADDRESS = String(42)
HASH = String(66)
T = TypeVar("T")


class ContractRow(Base):
    __tablename__ = "chain_contracts"

    network: Mapped[str] = mapped_column(NETWORK, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(ADDRESS)
    tx_hash: Mapped[str | None] = mapped_column(HASH, nullable=True)
    block_number: Mapped[int] = mapped_column(BigInteger)


class TransactionRow(Base):
    """One signed transaction. status: pending (signed, maybe sent), mined, reverted, dropped (its nonce was
    taken by another transaction)."""

    __tablename__ = "chain_transactions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network: Mapped[str] = mapped_column(NETWORK, index=True)
    purpose: Mapped[str] = mapped_column(String(200), index=True)
    sender: Mapped[str] = mapped_column(ADDRESS)
    nonce: Mapped[int] = mapped_column(BigInteger)
    tx_hash: Mapped[str] = mapped_column(HASH, unique=True)
    raw: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)
    block_number: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    gas_used: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))


class AnchorRow(Base):
    """A checkpoint of the local log as anchored on chain (read back from the chain's receipt)."""

    __tablename__ = "chain_anchors"
    __table_args__ = (UniqueConstraint("network", "log_id", "size"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    network: Mapped[str] = mapped_column(NETWORK, index=True)
    contract: Mapped[str] = mapped_column(ADDRESS)
    log_id: Mapped[str] = mapped_column(HASH)
    size: Mapped[int] = mapped_column(BigInteger, index=True)
    root: Mapped[str] = mapped_column(HASH)
    tx_hash: Mapped[str] = mapped_column(HASH)
    block_number: Mapped[int] = mapped_column(BigInteger)
    block_hash: Mapped[str] = mapped_column(HASH)
    anchored_at: Mapped[str] = mapped_column(String(32))


def kept(session: Session, found: T) -> T:
    """Rows (one, a list, or None) detached from a read session, so they stay readable after it ends (a read
    session rolls back, which would expire them)."""
    for row in found if isinstance(found, list) else [found]:
        if row is not None:
            session.expunge(row)
    return found
