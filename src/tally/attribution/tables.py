"""Attribution records, one row per attributed answer (the full record as JSON, its ledger entry)."""

from __future__ import annotations

from sqlalchemy import JSON, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base, BigInt


class AttributionRow(Base):
    __tablename__ = "attributions"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # the inference id
    model: Mapped[str] = mapped_column(String(256), index=True)
    adapter_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    record: Mapped[dict] = mapped_column(JSON)
    record_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)


class RowInfluence(Base):
    """Signed influence of one training row on one answer (what reputation aggregates)."""

    __tablename__ = "attribution_row_influence"

    inference: Mapped[str] = mapped_column(String(80), primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    datanet: Mapped[str] = mapped_column(String(64), index=True)
    contributor: Mapped[str] = mapped_column(String(42), index=True)
    influence: Mapped[float] = mapped_column(Float)
