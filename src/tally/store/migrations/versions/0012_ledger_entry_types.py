"""Which ledger entries carry each event type (ledger_entry_types), filled from the stored bundles.

Revision ID: 0012_ledger_entry_types
Revises: 0011_near_dup_bands
Create Date: 2026-12-06
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0012_ledger_entry_types"
down_revision = "0011_near_dup_bands"
branch_labels = None
depends_on = None

LENGTH_BYTES = 4  # tally.ledger.bundles: each entry in a bundle is prefixed with its length
CHUNK = 1000  # bundles read at a time


def upgrade() -> None:
    types = op.create_table(
        "ledger_entry_types",
        sa.Column("type", sa.String(96), primary_key=True),
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
    )
    conn = op.get_bind()
    last = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT seq, entry_count, entries FROM ledger_bundles WHERE seq > :last ORDER BY seq LIMIT :n"),
            {"last": last, "n": CHUNK},
        ).all()
        if not rows:
            break
        found = []
        for seq, count, blob in rows:
            blob, at = bytes(blob), 0
            for i in range(count):
                size = int.from_bytes(blob[at : at + LENGTH_BYTES], "big")
                body = blob[at + LENGTH_BYTES : at + LENGTH_BYTES + size]
                at += LENGTH_BYTES + size
                found.append({"type": json.loads(body)["type"], "seq": seq + i})
        op.bulk_insert(types, found)
        last = rows[-1][0]


def downgrade() -> None:
    op.drop_table("ledger_entry_types")
