"""Attribution: one record per attributed answer, and per-row signed influence for reputation.

Revision ID: 0005_attribution
Revises: 0004_factory
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0005_attribution"
down_revision = "0004_factory"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "attributions",
        sa.Column("id", sa.String(80), primary_key=True),
        sa.Column("model", sa.String(256), nullable=False, index=True),
        sa.Column("adapter_hash", sa.String(64), nullable=True, index=True),
        sa.Column("record", sa.JSON(), nullable=False),
        sa.Column("record_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
    )
    op.create_table(
        "attribution_row_influence",
        sa.Column("inference", sa.String(80), primary_key=True),
        sa.Column("row_hash", sa.String(64), primary_key=True),
        sa.Column("datanet", sa.String(64), nullable=False, index=True),
        sa.Column("contributor", sa.String(42), nullable=False, index=True),
        sa.Column("influence", sa.Float(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("attribution_row_influence")
    op.drop_table("attributions")
