"""Near-duplicate candidates from LSH band keys stored beside the rows, instead of an index held in memory.

Revision ID: 0011_near_dup_bands
Revises: 0010_jobs
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0011_near_dup_bands"
down_revision = "0010_jobs"
branch_labels = None
depends_on = None

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Filled as rows arrive; rows stored before this table (or under another threshold's layout) get their keys from
    # their stored signatures the first time an upload to their datanet needs them.
    op.create_table(
        "datanet_row_bands",
        sa.Column("datanet", sa.String(64), primary_key=True),
        sa.Column("layout", sa.String(16), primary_key=True),
        sa.Column("key", BigInt, primary_key=True, autoincrement=False),
        sa.Column("row_ref", BigInt, primary_key=True, autoincrement=False),  # the row hash's first 8 bytes
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("datanet_row_bands")
