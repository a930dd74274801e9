"""Fault injection on the database file: `tally ledger verify` fails and names the first bad index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.conftest import append_notes
from typer.testing import CliRunner

from tally.cli.main import app
from tally.config import Settings
from tally.ledger import Ledger, merkle, open_ledger
from tally.ledger.tables import node_id
from tally.store import open_store

runner = CliRunner()


@pytest.fixture
def db(settings: Settings) -> Path:
    """A closed log of 41 entries (seq 1..40 hold marker-0..marker-39) with checkpoints at sizes 21 and 41."""
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    append_notes(ledger, 20, prefix="marker")
    ledger.checkpoint()
    with ledger.store.transaction() as s:
        from tests.conftest import Note

        ledger.append_batch(s, [(Note(text=f"marker-{i}"), "alice") for i in range(20, 40)])
    ledger.checkpoint()
    store.dispose()  # the last connection checkpoints the WAL into the main file
    path = settings.data_dir / "tally.db"
    assert not Path(f"{path}-wal").exists() or Path(f"{path}-wal").stat().st_size == 0
    return path


def verify() -> tuple[int, str]:
    result = runner.invoke(app, ["ledger", "verify"])
    return result.exit_code, result.output


def sql(path: Path, *statements: str) -> None:
    con = sqlite3.connect(path)
    with con:
        for st in statements:
            con.execute(st)
    con.close()


def test_an_untouched_log_verifies(db: Path) -> None:
    code, out = verify()
    assert code == 0, out
    assert "ledger OK: 41 entries" in out and "2 checkpoints" in out


def test_flipped_byte_in_an_entry(db: Path) -> None:
    data = bytearray(db.read_bytes())
    at = data.find(b'marker-17"')
    assert at > 0 and data.count(b'marker-17"') == 1
    data[at] ^= 0x20  # "m" -> "M"
    db.write_bytes(bytes(data))
    code, out = verify()
    assert code == 1 and "at index 18" in out and "leaf hash" in out


def test_deleted_row(db: Path) -> None:
    sql(db, "DELETE FROM ledger_entries WHERE seq = 9")
    code, out = verify()
    assert code == 1 and "at index 9" in out and "missing" in out


def test_reordered_rows(db: Path) -> None:
    sql(
        db,
        "UPDATE ledger_entries SET seq = -1 WHERE seq = 5",
        "UPDATE ledger_entries SET seq = 5 WHERE seq = 6",
        "UPDATE ledger_entries SET seq = 6 WHERE seq = -1",
    )
    code, out = verify()
    assert code == 1 and "at index 5" in out


def test_truncated_tail(db: Path) -> None:
    sql(db, "DELETE FROM ledger_entries WHERE seq >= 30", "UPDATE ledger_state SET size = 30")
    code, out = verify()
    assert code == 1 and "at index 30" in out


def test_checkpoint_rolled_back(db: Path) -> None:
    sql(
        db,
        "DELETE FROM ledger_checkpoints WHERE size = 41",
        "DELETE FROM ledger_entries WHERE seq >= 21",
        "UPDATE ledger_state SET size = 21",
    )
    code, out = verify()
    assert code == 1 and "at index 21" in out


def test_deleting_only_the_newest_checkpoint_is_caught_by_the_witness(db: Path) -> None:
    sql(db, "DELETE FROM ledger_checkpoints WHERE size = 41")
    code, out = verify()
    assert code == 1 and "rolled back" in out and "at index 21" in out


def test_a_consistent_rewrite_is_caught_by_the_signed_checkpoint(db: Path, settings: Settings) -> None:
    """Change entry 10 and recompute its leaf and every node: only the signatures can tell."""
    con = sqlite3.connect(db)
    body = con.execute("SELECT body FROM ledger_entries WHERE seq = 10").fetchone()[0]
    forged = body.replace(b"marker-9", b"forged-9")
    with con:
        con.execute(
            "UPDATE ledger_entries SET body = ?, leaf_hash = ? WHERE seq = 10", (forged, merkle.leaf_hash(forged))
        )
        leaves = [bytes(h) for (h,) in con.execute("SELECT leaf_hash FROM ledger_entries ORDER BY seq")]
        con.execute("DELETE FROM ledger_nodes")
        for level in range(1, 7):
            width = 1 << level
            for index in range(len(leaves) // width):
                h = merkle.root_of(leaves[index * width : (index + 1) * width])
                con.execute("INSERT INTO ledger_nodes VALUES (?, ?)", (node_id(level, index), h))
    con.close()
    code, out = verify()
    assert code == 1 and "at index 0" in out and "checkpoint signed at size 21" in out


def test_the_log_still_opens_for_appends_after_verification(db: Path, settings: Settings) -> None:
    store = open_store(settings)
    ledger: Ledger = open_ledger(settings, store)
    append_notes(ledger, 2)
    store.dispose()
    code, out = verify()
    assert code == 0, out
