"""Rewards tables: one accrual per priced answer, its lines (who gets what, in which role), running balances,
closed epochs and their payouts with proofs; requesters' prepaid credit and its moves.

Amounts are decimal strings: they are uint256 on chain and may outgrow a 64-bit column (18-decimal currencies),
and SQLite has no exact wide integer type. All arithmetic on them happens in Python integers.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base, BigInt

Amount = String(80)  # decimal digits of a uint256 (at most 78)


class AccrualRow(Base):
    __tablename__ = "rewards_accruals"

    inference: Mapped[str] = mapped_column(String(80), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    policy_hash: Mapped[str] = mapped_column(String(64))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    fee: Mapped[str] = mapped_column(Amount)
    answered_at: Mapped[str] = mapped_column(String(32))
    accrued_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInteger)


class AccrualLineRow(Base):
    """One recipient's part of one fee. `epoch` is null until an epoch pays it."""

    __tablename__ = "rewards_accrual_lines"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    inference: Mapped[str] = mapped_column(String(80), ForeignKey("rewards_accruals.inference"), index=True)
    account: Mapped[str] = mapped_column(String(42), index=True)
    role: Mapped[str] = mapped_column(String(32))
    share: Mapped[float | None] = mapped_column(Float, nullable=True)  # the attribution share (data role only)
    amount: Mapped[str] = mapped_column(Amount)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)


class BalanceRow(Base):
    """Running totals per account: everything accrued, and what closed epochs have put in a payout tree."""

    __tablename__ = "rewards_balances"

    account: Mapped[str] = mapped_column(String(42), primary_key=True)
    accrued: Mapped[str] = mapped_column(Amount)
    paid: Mapped[str] = mapped_column(Amount)


class EpochRow(Base):
    __tablename__ = "rewards_epochs"

    number: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    root: Mapped[str] = mapped_column(String(66))
    total: Mapped[str] = mapped_column(Amount)
    accounts: Mapped[int] = mapped_column(Integer)
    accruals: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInteger)


class PayoutRow(Base):
    """One leaf of an epoch's payout tree, with the proof a claimant submits."""

    __tablename__ = "rewards_payouts"

    epoch: Mapped[int] = mapped_column(Integer, ForeignKey("rewards_epochs.number"), primary_key=True)
    account: Mapped[str] = mapped_column(String(42), primary_key=True, index=True)
    index: Mapped[int] = mapped_column(Integer)
    amount: Mapped[str] = mapped_column(Amount)
    proof: Mapped[list[str]] = mapped_column(JSON)


class CreditAccountRow(Base):
    """A requester's prepaid credit: what is left, and the running totals that explain it."""

    __tablename__ = "rewards_credit_accounts"

    account: Mapped[str] = mapped_column(String(42), primary_key=True)
    balance: Mapped[str] = mapped_column(Amount)
    credited: Mapped[str] = mapped_column(Amount)
    charged: Mapped[str] = mapped_column(Amount)


class CreditMoveRow(Base):
    """One change of a credit balance: a credit (`by` who added it) or the charge for one answer (`inference`)."""

    __tablename__ = "rewards_credit_moves"

    id: Mapped[int] = mapped_column(BigInt, primary_key=True, autoincrement=True)
    account: Mapped[str] = mapped_column(String(42), ForeignKey("rewards_credit_accounts.account"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # credit, charge
    amount: Mapped[str] = mapped_column(Amount)
    balance: Mapped[str] = mapped_column(Amount)  # after this move
    inference: Mapped[str | None] = mapped_column(String(80), nullable=True, unique=True)
    by: Mapped[str | None] = mapped_column(String(256), nullable=True)
    at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInteger)
