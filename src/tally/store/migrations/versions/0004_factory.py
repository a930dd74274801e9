"""Factory: trained adapters, fine-tuning jobs, evaluations, pipeline runs and steps.

Revision ID: 0004_factory
Revises: 0003_datanets
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004_factory"
down_revision = "0003_datanets"
branch_labels = None
depends_on = None

# 64-bit where it matters: SQLite's INTEGER is 64 bits already (and INTEGER PRIMARY KEY the rowid), PostgreSQL's 32.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "factory_adapters",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, index=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("base_model", sa.String(256), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("published", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(42), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
    )
    op.create_table(
        "factory_jobs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("status", sa.String(16), nullable=False, index=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(42), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("started_at", sa.String(32), nullable=True),
        sa.Column("finished_at", sa.String(32), nullable=True),
        sa.Column("output_dir", sa.Text(), nullable=False),
        sa.Column("adapter_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
    )
    op.create_table(
        "factory_evals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False, index=True),
        sa.Column("adapter_id", sa.String(64), nullable=True),
        sa.Column("datanet", sa.String(64), nullable=False, index=True),
        sa.Column("snapshot", sa.String(64), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_by", sa.String(42), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("ledger_seq", BigInt, nullable=False),
    )
    op.create_table(
        "pipeline_runs",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("pipeline", sa.String(100), nullable=False, index=True),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("trigger", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_table(
        "pipeline_steps",
        sa.Column("run_id", sa.String(40), primary_key=True),
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("pipeline", sa.String(100), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("input_hash", sa.String(64), nullable=False, index=True),
        sa.Column("outputs", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.String(32), nullable=False),
        sa.Column("finished_at", sa.String(32), nullable=True),
    )


def downgrade() -> None:
    for table in ("pipeline_steps", "pipeline_runs", "factory_evals", "factory_jobs", "factory_adapters"):
        op.drop_table(table)
