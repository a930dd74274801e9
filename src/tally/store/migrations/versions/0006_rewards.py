"""Rewards: accruals and their lines, running balances, epochs and payouts.

Revision ID: 0006_rewards
Revises: 0005_attribution
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006_rewards"
down_revision = "0005_attribution"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

AMOUNT = 80  # decimal digits of a uint256


def upgrade() -> None:
    op.create_table(
        "rewards_accruals",
        sa.Column("inference", sa.String(80), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False, index=True),
        sa.Column("policy_hash", sa.String(64), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("fee", sa.String(AMOUNT), nullable=False),
        sa.Column("answered_at", sa.String(32), nullable=False),
        sa.Column("accrued_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rewards_accrual_lines",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column("inference", sa.String(80), sa.ForeignKey("rewards_accruals.inference"), nullable=False, index=True),
        sa.Column("account", sa.String(42), nullable=False, index=True),
        sa.Column("role", sa.String(32), nullable=False),
        sa.Column("share", sa.Float(), nullable=True),
        sa.Column("amount", sa.String(AMOUNT), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True, index=True),
    )
    op.create_table(
        "rewards_balances",
        sa.Column("account", sa.String(42), primary_key=True),
        sa.Column("accrued", sa.String(AMOUNT), nullable=False),
        sa.Column("paid", sa.String(AMOUNT), nullable=False),
    )
    op.create_table(
        "rewards_epochs",
        sa.Column("number", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("root", sa.String(66), nullable=False),
        sa.Column("total", sa.String(AMOUNT), nullable=False),
        sa.Column("accounts", sa.Integer(), nullable=False),
        sa.Column("accruals", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "rewards_payouts",
        sa.Column("epoch", sa.Integer(), sa.ForeignKey("rewards_epochs.number"), primary_key=True),
        sa.Column("account", sa.String(42), primary_key=True, index=True),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("amount", sa.String(AMOUNT), nullable=False),
        sa.Column("proof", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rewards_payouts")
    op.drop_table("rewards_epochs")
    op.drop_table("rewards_balances")
    op.drop_table("rewards_accrual_lines")
    op.drop_table("rewards_accruals")
