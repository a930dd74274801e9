"""Ledger entries in bundles; only subtrees of height >= tile_height stored as nodes.

Each existing entry becomes a bundle of one; nodes below height 8 are dropped (they are recomputed from leaf hashes
when needed); the log keeps tile height 8; the head's frontier (its perfect subtrees) is stored in ledger_state.

Revision ID: 0007_ledger_bundles
Revises: 0006_rewards
Create Date: 2026-11-28
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007_ledger_bundles"
down_revision = "0006_rewards"
branch_labels = None
depends_on = None

RowId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TILE_HEIGHT = 8
NODE_LEVEL_SHIFT = 48
CHUNK = 10_000


def upgrade() -> None:
    bundles = op.create_table(
        "ledger_bundles",
        sa.Column("seq", RowId, primary_key=True, autoincrement=False),
        sa.Column("entry_count", sa.Integer(), nullable=False),
        sa.Column("leaf_hashes", sa.LargeBinary(), nullable=False),
        sa.Column("entries", sa.LargeBinary(), nullable=False),
    )
    conn = op.get_bind()
    frontier = _old_frontier(conn)
    last = -1
    while True:
        rows = conn.execute(
            sa.text("SELECT seq, leaf_hash, body FROM ledger_entries WHERE seq > :last ORDER BY seq LIMIT :n"),
            {"last": last, "n": CHUNK},
        ).all()
        if not rows:
            break
        op.bulk_insert(
            bundles,
            [
                {"seq": seq, "entry_count": 1, "leaf_hashes": bytes(h), "entries": len(b).to_bytes(4, "big") + bytes(b)}
                for seq, h, b in rows
            ],
        )
        last = rows[-1][0]
    op.drop_table("ledger_entries")
    conn.execute(sa.text("DELETE FROM ledger_nodes WHERE id < :low"), {"low": TILE_HEIGHT << NODE_LEVEL_SHIFT})
    with op.batch_alter_table("ledger_state") as batch:
        batch.add_column(sa.Column("tile_height", sa.Integer(), nullable=False, server_default=str(TILE_HEIGHT)))
        batch.add_column(sa.Column("frontier", sa.LargeBinary(), nullable=True))
    conn.execute(sa.text("UPDATE ledger_state SET frontier = :f WHERE id = 1"), {"f": frontier})
    with op.batch_alter_table("ledger_state") as batch:  # no portable empty-blob default: fill, then require
        batch.alter_column("frontier", existing_type=sa.LargeBinary(), nullable=False)


def _old_frontier(conn: sa.Connection) -> bytes:
    """The head's perfect subtrees, largest first, read from the old layout (which stored every node)."""
    size = conn.execute(sa.text("SELECT size FROM ledger_state WHERE id = 1")).scalar_one()
    out, start = [], 0
    for level in range(size.bit_length() - 1, -1, -1):
        if not size >> level & 1:
            continue
        if level == 0:
            h = conn.execute(sa.text("SELECT leaf_hash FROM ledger_entries WHERE seq = :s"), {"s": start})
        else:
            nid = (level << NODE_LEVEL_SHIFT) | (start >> level)
            h = conn.execute(sa.text("SELECT hash FROM ledger_nodes WHERE id = :i"), {"i": nid})
        out.append(bytes(h.scalar_one()))
        start += 1 << level
    return b"".join(out)


def downgrade() -> None:
    import hashlib

    def node(a: bytes, b: bytes) -> bytes:
        return hashlib.sha256(b"\x01" + a + b).digest()

    entries = op.create_table(
        "ledger_entries",
        sa.Column("seq", RowId, primary_key=True, autoincrement=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("type", sa.String(128), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
    )
    conn = op.get_bind()
    height = conn.execute(sa.text("SELECT tile_height FROM ledger_state WHERE id = 1")).scalar_one()
    stack: list[tuple[int, bytes]] = []  # (level, hash) of the perfect pieces so far, largest first
    low_nodes = []
    rows = conn.execute(sa.text("SELECT seq, entry_count, leaf_hashes, entries FROM ledger_bundles ORDER BY seq")).all()
    for seq, count, leaf_blob, blob in rows:
        at, out = 0, []
        for i in range(count):
            n = int.from_bytes(blob[at : at + 4], "big")
            body, h = bytes(blob[at + 4 : at + 4 + n]), bytes(leaf_blob[32 * i : 32 * i + 32])
            at += 4 + n
            parsed = json.loads(body)
            out.append({"seq": seq + i, "leaf_hash": h, "type": parsed["type"], "actor": parsed["actor"], "body": body})
            stack.append((0, h))
            while len(stack) > 1 and stack[-1][0] == stack[-2][0]:
                (level, right), (_, left) = stack.pop(), stack.pop()
                stack.append((level + 1, node(left, right)))
                if level + 1 < height:
                    index = (seq + i) >> (level + 1)
                    low_nodes.append({"id": ((level + 1) << NODE_LEVEL_SHIFT) | index, "hash": stack[-1][1]})
        op.bulk_insert(entries, out)
    nodes = sa.table("ledger_nodes", sa.column("id", RowId), sa.column("hash", sa.LargeBinary(32)))
    if low_nodes:
        op.bulk_insert(nodes, low_nodes)
    op.drop_table("ledger_bundles")
    with op.batch_alter_table("ledger_state") as batch:
        batch.drop_column("tile_height")
        batch.drop_column("frontier")
