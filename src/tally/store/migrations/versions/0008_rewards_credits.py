"""Rewards: requesters' prepaid credit accounts and their moves (credits and charges).

Revision ID: 0008_rewards_credits
Revises: 0007_ledger_bundles
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008_rewards_credits"
down_revision = "0007_ledger_bundles"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

AMOUNT = 80  # decimal digits of a uint256


def upgrade() -> None:
    op.create_table(
        "rewards_credit_accounts",
        sa.Column("account", sa.String(42), primary_key=True),
        sa.Column("balance", sa.String(AMOUNT), nullable=False),
        sa.Column("credited", sa.String(AMOUNT), nullable=False),
        sa.Column("charged", sa.String(AMOUNT), nullable=False),
    )
    op.create_table(
        "rewards_credit_moves",
        sa.Column("id", BigInt, primary_key=True, autoincrement=True),
        sa.Column(
            "account", sa.String(42), sa.ForeignKey("rewards_credit_accounts.account"), nullable=False, index=True
        ),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount", sa.String(AMOUNT), nullable=False),
        sa.Column("balance", sa.String(AMOUNT), nullable=False),
        sa.Column("inference", sa.String(80), nullable=True, unique=True),
        sa.Column("by", sa.String(256), nullable=True),
        sa.Column("at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("rewards_credit_moves")
    op.drop_table("rewards_credit_accounts")
