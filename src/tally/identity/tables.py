"""Identity tables."""

from __future__ import annotations

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base


class AccountRow(Base):
    __tablename__ = "accounts"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)  # EIP-55 checksummed
    name: Mapped[str] = mapped_column(String(64), unique=True)
    roles: Mapped[str] = mapped_column(String(128))  # comma-separated, sorted
    created_at: Mapped[str] = mapped_column(String(32))


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    key_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("accounts.address"), index=True)
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    roles: Mapped[str] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[str] = mapped_column(String(32))
    expires_at: Mapped[str | None] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32))


class UsedNonce(Base):
    """Nonces of accepted signatures, per signer: a signature can be used once."""

    __tablename__ = "signature_nonces"

    address: Mapped[str] = mapped_column(String(42), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(78), primary_key=True)  # uint256 as decimal text
