"""Identity: accounts, API keys, used signature nonces.

Revision ID: 0002_identity
Revises: 0001_ledger
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0002_identity"
down_revision = "0001_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("roles", sa.String(128), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("account", sa.String(42), sa.ForeignKey("accounts.address"), nullable=False, index=True),
        sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("roles", sa.String(128), nullable=False),
        sa.Column("label", sa.String(128), nullable=False),
        sa.Column("created_at", sa.String(32), nullable=False),
        sa.Column("expires_at", sa.String(32), nullable=True),
        sa.Column("revoked_at", sa.String(32), nullable=True),
    )
    op.create_table(
        "signature_nonces",
        sa.Column("address", sa.String(42), primary_key=True),
        sa.Column("nonce", sa.String(78), primary_key=True),
    )


def downgrade() -> None:
    for name in ("signature_nonces", "api_keys", "accounts"):
        op.drop_table(name)
