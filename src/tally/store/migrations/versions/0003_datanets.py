"""Datanets: datanets, members, contributions, rows, snapshots, access requests.

Revision ID: 0003_datanets
Revises: 0002_identity
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_datanets"
down_revision = "0002_identity"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "datanets",
        sa.Column("slug", sa.String(64), primary_key=True),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("license", sa.String(256), nullable=False),
        sa.Column("uses", sa.JSON(), nullable=False),
        sa.Column("visibility", sa.String(8), nullable=False),
        sa.Column("policy", sa.String(16), nullable=False),
        sa.Column("max_upload_bytes", BigInt, nullable=False),
        sa.Column("max_rows_per_day", BigInt, nullable=False),
        sa.Column("owner", sa.String(42), sa.ForeignKey("accounts.address"), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "datanet_members",
        sa.Column("datanet", sa.String(64), sa.ForeignKey("datanets.slug"), primary_key=True),
        sa.Column("address", sa.String(42), sa.ForeignKey("accounts.address"), primary_key=True),
        sa.Column("added_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "contributions",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("datanet", sa.String(64), sa.ForeignKey("datanets.slug"), nullable=False, index=True),
        sa.Column("contributor", sa.String(42), sa.ForeignKey("accounts.address"), nullable=False, index=True),
        sa.Column("filename", sa.String(256), nullable=False),
        sa.Column("format", sa.String(16), nullable=False),
        sa.Column("content_root", sa.String(64), nullable=False),
        sa.Column("license", sa.String(256), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("signature", sa.String(132), nullable=True),
        sa.Column("nonce", sa.String(78), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
    )
    op.create_table(
        "datanet_rows",
        sa.Column("datanet", sa.String(64), sa.ForeignKey("datanets.slug"), primary_key=True),
        sa.Column("row_hash", sa.String(64), primary_key=True),
        sa.Column("contribution", sa.String(64), sa.ForeignKey("contributions.id"), nullable=False, index=True),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=True),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("minhash", sa.LargeBinary(), nullable=False),
        sa.Column("near_dup_of", sa.String(64), nullable=True),
        sa.Column("near_dup_score", sa.Float(), nullable=True),
        sa.Column("status", sa.String(8), nullable=False, index=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reviewed_by", sa.String(42), nullable=True),
        sa.Column("reviewed_at", sa.String(32), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "snapshots",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("datanet", sa.String(64), sa.ForeignKey("datanets.slug"), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("row_count", sa.Integer(), nullable=False),
        sa.Column("contributors", sa.JSON(), nullable=False),
        sa.Column("license", sa.String(256), nullable=False),
        sa.Column("created_by", sa.String(42), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
    )
    op.create_table(
        "snapshot_rows",
        sa.Column("datanet", sa.String(64), primary_key=True),
        sa.Column("snapshot", sa.String(64), primary_key=True),
        sa.Column("row_hash", sa.String(64), primary_key=True),
    )
    op.create_table(
        "access_requests",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("datanet", sa.String(64), sa.ForeignKey("datanets.slug"), nullable=False, index=True),
        sa.Column("requester", sa.String(42), sa.ForeignKey("accounts.address"), nullable=False, index=True),
        sa.Column("uses", sa.JSON(), nullable=False),
        sa.Column("purpose", sa.Text(), nullable=False),
        sa.Column("status", sa.String(8), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("decided_by", sa.String(42), nullable=True),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("decided_at", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    for name in ("access_requests", "snapshot_rows", "snapshots", "datanet_rows", "contributions",
                 "datanet_members", "datanets"):  # fmt: skip
        op.drop_table(name)
