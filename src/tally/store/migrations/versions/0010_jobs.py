"""Jobs that survive restarts (a lease, a heartbeat, a cancel flag, progress) and the publications outbox.

Revision ID: 0010_jobs
Revises: 0009_chain
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_jobs"
down_revision = "0009_chain"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("factory_jobs") as batch:
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="train"))
        batch.add_column(sa.Column("runner", sa.String(16), nullable=False, server_default="worker"))
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("lease_owner", sa.String(200), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.Float(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("cancel_requested", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("progress", sa.JSON(), nullable=True))
        batch.create_index("ix_factory_jobs_kind", ["kind"])
    # Jobs a server queued before this version ran on a thread inside it: whatever their row says, nothing runs
    # them now. Queued ones a worker picks up; one left `running` by a restart is failed, and says why.
    op.execute(
        "UPDATE factory_jobs SET status = 'failed', error = 'interrupted: the server stopped while it ran "
        "(before jobs ran in workers)' WHERE status = 'running'"
    )
    op.create_table(
        "factory_publications",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False, index=True),
        sa.Column("adapter_id", sa.String(64), nullable=False, index=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("published_by", sa.String(42), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
        sa.Column("state", sa.String(16), nullable=False, index=True),
    )


def downgrade() -> None:
    op.drop_table("factory_publications")
    with op.batch_alter_table("factory_jobs") as batch:
        batch.drop_index("ix_factory_jobs_kind")
        for column in (
            "progress",
            "cancel_requested",
            "attempts",
            "heartbeat_at",
            "lease_owner",
            "payload",
            "runner",
            "kind",
        ):
            batch.drop_column(column)
