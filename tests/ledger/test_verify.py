"""Fault injection on the database file: `tally ledger verify` fails and names the first bad index."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.conftest import append_notes, sqlite_only
from typer.testing import CliRunner

from tally.cli.main import app
from tally.config import Settings
from tally.ledger import Ledger, VerificationError, bundles, merkle, open_ledger, verify_ledger
from tally.ledger.tables import node_id
from tally.store import open_store

pytestmark = sqlite_only  # the faults are injected into the SQLite file (tests/postgres tampers on PostgreSQL)

TILE_HEIGHT = 2  # bundles of at most 4 entries, cut at multiples of 4

runner = CliRunner()


@pytest.fixture
def db(settings: Settings) -> Path:
    """A closed log of 41 entries (seq 1..40 hold marker-0..marker-39) with checkpoints at sizes 21 and 41, in
    bundles [0,1) [1,4) [4,8) ... [16,20) [20,21) | [21,24) [24,28) ... [36,40) [40,41). The CLI opens it with the
    default tile height; the log keeps its own."""
    store = open_store(settings)
    tiled = settings.ledger.model_copy(update={"tile_height": TILE_HEIGHT})
    ledger = open_ledger(settings.model_copy(update={"ledger": tiled}), store)
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


def failure(settings: Settings) -> VerificationError:
    """The error verification stops at, with its reason code and values."""
    store = open_store(settings)
    try:
        with pytest.raises(VerificationError) as info:
            verify_ledger(open_ledger(settings, store))
    finally:
        store.dispose()
    assert info.value.kind == "internal"  # the stored log is at fault, not a caller
    return info.value


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


def test_flipped_byte_in_an_entry(db: Path, settings: Settings) -> None:
    data = bytearray(db.read_bytes())
    at = data.find(b'marker-17"')
    assert at > 0 and data.count(b'marker-17"') == 1
    data[at] ^= 0x20  # "m" -> "M"
    db.write_bytes(bytes(data))
    code, out = verify()
    assert code == 1 and "at index 18" in out and "leaf hash" in out
    err = failure(settings)
    assert (err.reason, err.index) == ("leaf_mismatch", 18) and err.values["stored"] != err.values["computed"]


def test_deleted_row(db: Path, settings: Settings) -> None:
    sql(db, "DELETE FROM ledger_bundles WHERE seq = 8")
    code, out = verify()
    assert code == 1 and "at index 8" in out and "missing" in out
    err = failure(settings)
    assert err.reason == "entry_missing" and (err.values["expected"], err.values["seq"]) == (8, 12)


def test_reordered_rows(db: Path, settings: Settings) -> None:
    sql(
        db,
        "UPDATE ledger_bundles SET seq = -1 WHERE seq = 4",
        "UPDATE ledger_bundles SET seq = 4 WHERE seq = 8",
        "UPDATE ledger_bundles SET seq = 8 WHERE seq = -1",
    )
    code, out = verify()
    assert code == 1 and "at index 4" in out and "sequence number 8" in out
    err = failure(settings)
    assert err.reason == "sequence_mismatch" and (err.values["expected"], err.values["got"]) == (4, 8)


def test_truncated_tail(db: Path, settings: Settings) -> None:
    sql(db, "DELETE FROM ledger_bundles WHERE seq >= 28", "UPDATE ledger_state SET size = 28")
    code, out = verify()
    assert code == 1 and "at index 28" in out
    err = failure(settings)
    assert err.reason == "checkpoint_beyond_log" and (err.values["checkpoint_size"], err.values["size"]) == (41, 28)


def test_checkpoint_rolled_back(db: Path, settings: Settings) -> None:
    sql(
        db,
        "DELETE FROM ledger_checkpoints WHERE size = 41",
        "DELETE FROM ledger_bundles WHERE seq >= 21",
        "UPDATE ledger_state SET size = 21",
    )
    code, out = verify()
    assert code == 1 and "at index 21" in out
    err = failure(settings)
    assert err.reason == "witness_beyond_log" and (err.values["witness_size"], err.values["size"]) == (41, 21)


def test_an_overlapping_bundle_that_would_shadow_an_entry(db: Path, settings: Settings) -> None:
    con = sqlite3.connect(db)
    count, blob = con.execute("SELECT entry_count, entries FROM ledger_bundles WHERE seq = 8").fetchone()
    forged = bundles.unpack(blob, count)[1].replace(b"marker-8", b"forged-8")
    with con:
        con.execute(
            "INSERT INTO ledger_bundles VALUES (9, 1, ?, ?)", (merkle.leaf_hash(forged), bundles.pack([forged]))
        )
    con.close()
    code, out = verify()
    assert code == 1 and "at index 9" in out and "overlaps" in out
    err = failure(settings)
    assert err.reason == "bundle_overlap" and (err.values["seq"], err.values["expected"]) == (9, 12)


def test_a_bundle_across_a_tile_boundary(db: Path, settings: Settings) -> None:
    """Entries 1..7 merged into one row: every entry and hash is right, but reads rely on bundles staying in a tile."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT leaf_hashes, entries, entry_count FROM ledger_bundles WHERE seq IN (1, 4) ORDER BY seq")
    hashes, bodies = [], []
    for leaf_blob, blob, count in rows.fetchall():
        hashes += bundles.split_hashes(leaf_blob, count)
        bodies += bundles.unpack(blob, count)
    with con:
        con.execute("DELETE FROM ledger_bundles WHERE seq IN (1, 4)")
        con.execute("INSERT INTO ledger_bundles VALUES (1, 7, ?, ?)", (b"".join(hashes), bundles.pack(bodies)))
    con.close()
    code, out = verify()
    assert code == 1 and "at index 1" in out and "tile boundary" in out
    err = failure(settings)
    assert err.reason == "bundle_across_tile" and (err.values["seq"], err.values["count"]) == (1, 7)


def test_a_malformed_bundle(db: Path, settings: Settings) -> None:
    sql(db, "UPDATE ledger_bundles SET entry_count = 3 WHERE seq = 4")
    code, out = verify()
    assert code == 1 and "at index 4" in out and "malformed" in out
    err = failure(settings)
    assert err.reason == "bundle_malformed" and err.values["seq"] == 4


def test_a_wrong_frontier_the_next_append_would_build_on(db: Path, settings: Settings) -> None:
    """41 = 32 + 8 + 1: the head is three subtrees; the second one's hash is zeroed."""
    con = sqlite3.connect(db)
    frontier = con.execute("SELECT frontier FROM ledger_state").fetchone()[0]
    assert len(frontier) == 3 * 32
    with con:
        con.execute("UPDATE ledger_state SET frontier = ?", (frontier[:32] + bytes(32) + frontier[64:],))
    con.close()
    code, out = verify()
    assert code == 1 and "at index 32" in out and "frontier" in out
    err = failure(settings)
    assert err.reason == "frontier_mismatch" and (err.values["start"], err.values["end"]) == (32, 40)
    assert err.values["stored"] == merkle.b64(bytes(32)) != err.values["computed"]


def test_a_stored_node_outside_the_tree(db: Path, settings: Settings) -> None:
    sql(db, f"INSERT INTO ledger_nodes VALUES ({node_id(3, 99)}, zeroblob(32))")
    code, out = verify()
    assert code == 1 and "at index 792" in out and "not nodes of the log" in out
    err = failure(settings)
    assert err.reason == "stray_nodes" and err.values["count"] == 1


def test_deleting_only_the_newest_checkpoint_is_caught_by_the_witness(db: Path, settings: Settings) -> None:
    sql(db, "DELETE FROM ledger_checkpoints WHERE size = 41")
    code, out = verify()
    assert code == 1 and "rolled back" in out and "at index 21" in out
    err = failure(settings)
    assert err.reason == "witness_rolled_back" and (err.values["witness_size"], err.values["checkpoint_size"]) == (
        41,
        21,
    )


def test_a_consistent_rewrite_is_caught_by_the_signed_checkpoint(db: Path, settings: Settings) -> None:
    """Change entry 10 and recompute its leaf and every stored node: only the signatures can tell."""
    con = sqlite3.connect(db)
    rows = con.execute("SELECT seq, entry_count, leaf_hashes, entries FROM ledger_bundles ORDER BY seq").fetchall()
    leaves: list[bytes] = []
    with con:
        for seq, count, leaf_blob, blob in rows:
            bodies = bundles.unpack(blob, count)
            hashes = bundles.split_hashes(leaf_blob, count)
            if seq <= 10 < seq + count:
                bodies[10 - seq] = bodies[10 - seq].replace(b"marker-9", b"forged-9")
                hashes[10 - seq] = merkle.leaf_hash(bodies[10 - seq])
                con.execute(
                    "UPDATE ledger_bundles SET leaf_hashes = ?, entries = ? WHERE seq = ?",
                    (b"".join(hashes), bundles.pack(bodies), seq),
                )
            leaves.extend(hashes)
        _, nodes = merkle.extend([], 0, leaves, min_level=TILE_HEIGHT)
        con.execute("DELETE FROM ledger_nodes")
        con.executemany("INSERT INTO ledger_nodes VALUES (?, ?)", [(node_id(lv, i), h) for lv, i, h in nodes])
    con.close()
    code, out = verify()
    assert code == 1 and "at index 0" in out and "checkpoint signed at size 21" in out
    err = failure(settings)
    assert err.reason == "checkpoint_root_mismatch" and err.values["size"] == 21
    assert err.values["expected"] != err.values["computed"]


def test_the_log_still_opens_for_appends_after_verification(db: Path, settings: Settings) -> None:
    store = open_store(settings)
    ledger: Ledger = open_ledger(settings, store)
    append_notes(ledger, 2)
    store.dispose()
    code, out = verify()
    assert code == 0, out
