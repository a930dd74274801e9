"""Datanet tables."""

from __future__ import annotations

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base, BigInt


class DatanetRow(Base):
    __tablename__ = "datanets"

    slug: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(16))  # instruction | chat | documents
    license: Mapped[str] = mapped_column(String(256))  # normalised SPDX expression
    uses: Mapped[list[str]] = mapped_column(JSON)  # permitted: train, rag, eval, commercial
    visibility: Mapped[str] = mapped_column(String(8))  # public | private
    policy: Mapped[str] = mapped_column(String(16))  # open | owner-reviewed | invite-only
    max_upload_bytes: Mapped[int] = mapped_column(BigInt)
    max_rows_per_day: Mapped[int] = mapped_column(BigInt)
    owner: Mapped[str] = mapped_column(ForeignKey("accounts.address"))
    created_at: Mapped[str] = mapped_column(String(32))


class MemberRow(Base):
    """Invited contributors of a datanet."""

    __tablename__ = "datanet_members"

    datanet: Mapped[str] = mapped_column(ForeignKey("datanets.slug"), primary_key=True)
    address: Mapped[str] = mapped_column(ForeignKey("accounts.address"), primary_key=True)
    added_at: Mapped[str] = mapped_column(String(32))


class ContributionRow(Base):
    __tablename__ = "contributions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 over what the contributor submitted
    datanet: Mapped[str] = mapped_column(ForeignKey("datanets.slug"), index=True)
    contributor: Mapped[str] = mapped_column(ForeignKey("accounts.address"), index=True)
    filename: Mapped[str] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16))
    content_root: Mapped[str] = mapped_column(String(64))
    license: Mapped[str] = mapped_column(String(256))
    row_count: Mapped[int] = mapped_column(Integer)
    signature: Mapped[str | None] = mapped_column(String(132))
    nonce: Mapped[str | None] = mapped_column(String(78))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)


class DataRow(Base):
    __tablename__ = "datanet_rows"
    __table_args__ = (
        # a datanet's rows in upload order, with the status readers filter on: pages of rows without a sort
        Index("ix_datanet_rows_order", "datanet", "created_at", "contribution", "position", "status"),
        # counts per contribution and status (the contributor leaderboard) from the index alone
        Index("ix_datanet_rows_tally", "datanet", "contribution", "status"),
    )

    datanet: Mapped[str] = mapped_column(ForeignKey("datanets.slug"), primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    contribution: Mapped[str] = mapped_column(ForeignKey("contributions.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # index within its contribution
    line: Mapped[int | None] = mapped_column(Integer)
    content: Mapped[str] = mapped_column(Text)  # canonical JSON of the normalised row
    minhash: Mapped[bytes] = mapped_column(LargeBinary)
    near_dup_of: Mapped[str | None] = mapped_column(String(64))
    near_dup_score: Mapped[float | None] = mapped_column(Float)
    status: Mapped[str] = mapped_column(String(8), index=True)  # pending | accepted | rejected
    reason: Mapped[str | None] = mapped_column(Text)
    reviewed_by: Mapped[str | None] = mapped_column(String(42))
    reviewed_at: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[str] = mapped_column(String(32))


class RowBand(Base):
    """A row's LSH band keys (one per band of the layout, see `dedup.BandLayout`): a new row's near-duplicate
    candidates are the stored rows sharing a key, found by the primary key's index, so no per-row state lives in a
    server's memory. Derived from `datanet_rows.minhash`: rebuilt from it when missing (another layout, older data).

    Small on purpose, since keys are random and every upload touches a page per key: the row is named by the first
    8 bytes of its hash (`row_ref`, enough to find it among the datanet's rows), and on SQLite the table is its own
    primary-key index (WITHOUT ROWID)."""

    __tablename__ = "datanet_row_bands"
    __table_args__ = ({"sqlite_with_rowid": False},)

    datanet: Mapped[str] = mapped_column(String(64), primary_key=True)
    layout: Mapped[str] = mapped_column(String(16), primary_key=True)  # "<bands>x<rows>"
    key: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)
    row_ref: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=False)


class SnapshotRow(Base):
    __tablename__ = "snapshots"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex Merkle root of accepted row hashes
    datanet: Mapped[str] = mapped_column(ForeignKey("datanets.slug"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)
    row_count: Mapped[int] = mapped_column(Integer)
    contributors: Mapped[dict[str, int]] = mapped_column(JSON)  # address -> accepted rows
    license: Mapped[str] = mapped_column(String(256))
    created_by: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)


class SnapshotMember(Base):
    """Which rows a snapshot holds, in canonical (row hash) order."""

    __tablename__ = "snapshot_rows"

    datanet: Mapped[str] = mapped_column(String(64), primary_key=True)
    snapshot: Mapped[str] = mapped_column(String(64), primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64), primary_key=True)


class AccessRequestRow(Base):
    __tablename__ = "access_requests"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    datanet: Mapped[str] = mapped_column(ForeignKey("datanets.slug"), index=True)
    requester: Mapped[str] = mapped_column(ForeignKey("accounts.address"), index=True)
    uses: Mapped[list[str]] = mapped_column(JSON)
    purpose: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(8))  # pending | granted | denied
    reason: Mapped[str | None] = mapped_column(Text)
    decided_by: Mapped[str | None] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[str | None] = mapped_column(String(32))
