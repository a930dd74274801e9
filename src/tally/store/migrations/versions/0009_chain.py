"""Chain: deployed contracts, the journal of signed transactions, anchored checkpoints.

Revision ID: 0009_chain
Revises: 0008_rewards_credits
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_chain"
down_revision = "0008_rewards_credits"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chain_contracts",
        sa.Column("network", sa.String(100), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("address", sa.String(42), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=True),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "chain_transactions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("network", sa.String(100), nullable=False, index=True),
        sa.Column("purpose", sa.String(200), nullable=False, index=True),
        sa.Column("sender", sa.String(42), nullable=False),
        sa.Column("nonce", sa.BigInteger(), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False, unique=True),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("block_number", sa.BigInteger(), nullable=True),
        sa.Column("gas_used", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "chain_anchors",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("network", sa.String(100), nullable=False, index=True),
        sa.Column("contract", sa.String(42), nullable=False),
        sa.Column("log_id", sa.String(66), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False, index=True),
        sa.Column("root", sa.String(66), nullable=False),
        sa.Column("tx_hash", sa.String(66), nullable=False),
        sa.Column("block_number", sa.BigInteger(), nullable=False),
        sa.Column("block_hash", sa.String(66), nullable=False),
        sa.Column("anchored_at", sa.String(32), nullable=False),
        sa.UniqueConstraint("network", "log_id", "size"),
    )


def downgrade() -> None:
    op.drop_table("chain_anchors")
    op.drop_table("chain_transactions")
    op.drop_table("chain_contracts")
