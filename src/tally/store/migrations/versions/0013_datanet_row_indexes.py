"""Indexes for paging a datanet's rows in upload order and counting them per contribution without reading the rows.

Revision ID: 0013_datanet_row_indexes
Revises: 0012_ledger_entry_types
Create Date: 2026-12-06
"""

from alembic import op

revision = "0013_datanet_row_indexes"
down_revision = "0012_ledger_entry_types"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_datanet_rows_order", "datanet_rows", ["datanet", "created_at", "contribution", "position", "status"]
    )
    op.create_index("ix_datanet_rows_tally", "datanet_rows", ["datanet", "contribution", "status"])


def downgrade() -> None:
    op.drop_index("ix_datanet_rows_tally", table_name="datanet_rows")
    op.drop_index("ix_datanet_rows_order", table_name="datanet_rows")
