"""Receipts verify offline, and any change to them is caught."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
from tests.conftest import append_notes
from typer.testing import CliRunner

from tally.cli.main import app
from tally.ledger import Ledger, ReceiptError, build_receipt, verify_receipt


@pytest.fixture
def receipt(ledger: Ledger) -> dict:
    append_notes(ledger, 12)
    return build_receipt(ledger, 5)


def test_receipt_verifies_and_returns_its_entry(receipt: dict, ledger: Ledger) -> None:
    entry = verify_receipt(receipt)
    assert entry.seq == 5 and entry.payload == {"text": "note-4"}
    assert verify_receipt(receipt, trusted_key=ledger.signer.verifier.encode()).seq == 5


def test_receipt_uses_an_existing_checkpoint_when_one_covers_the_entry(ledger: Ledger) -> None:
    append_notes(ledger, 4)
    cp = ledger.checkpoint()
    append_notes(ledger, 4)
    assert build_receipt(ledger, 2)["tree_size"] == cp.size
    assert build_receipt(ledger, cp.size)["tree_size"] == ledger.size()


def _flip_b64(value: str) -> str:
    raw = bytearray(base64.b64decode(value))
    raw[0] ^= 1
    return base64.b64encode(bytes(raw)).decode()


@pytest.mark.parametrize(
    ("mutate", "reason", "values"),
    [
        (lambda r: r.update(entry=r["entry"].replace("note-4", "note-X")), "root_mismatch", {}),
        (lambda r: r.update(index=r["index"] + 1), "root_mismatch", {}),  # 5 and 6 have proofs of one size in 13
        (lambda r: r.update(tree_size=r["tree_size"] + 1), "size_mismatch", {"tree_size": 14, "checkpoint_size": 13}),
        (lambda r: r["inclusion_proof"].__setitem__(0, _flip_b64(r["inclusion_proof"][0])), "root_mismatch", {}),
        (lambda r: r["inclusion_proof"].pop(), "wrong_proof_size", {"index": 5, "size": 13, "got": 3, "expected": 4}),
        (lambda r: r.update(checkpoint=r["checkpoint"].replace("\n13\n", "\n14\n")), "bad_checkpoint", {}),
        (lambda r: r.update(origin="someone.else/log"), "bad_checkpoint", {}),
        (lambda r: r.pop("checkpoint"), "missing_field", {"field": "checkpoint"}),
        (lambda r: r.update(format="other"), "bad_format", {"got": "other"}),
    ],
    ids=["entry", "index", "size", "proof-bit", "proof-short", "checkpoint", "origin", "missing", "format"],
)
def test_any_change_to_a_receipt_fails(receipt: dict, mutate, reason: str, values: dict) -> None:
    bad = copy.deepcopy(receipt)
    mutate(bad)
    with pytest.raises(ReceiptError) as info:
        verify_receipt(bad)
    assert info.value.reason == reason
    assert values.items() <= info.value.values.items()
    if reason == "root_mismatch":  # the proof led elsewhere: both roots are named
        assert info.value.values["expected"] != info.value.values["computed"]


def test_a_receipt_from_another_key_is_refused_when_a_key_is_trusted(receipt: dict, tmp_path: Path) -> None:
    from tally.ledger.notes import load_or_create_signer

    stranger = load_or_create_signer(tmp_path / "other.key", receipt["origin"]).verifier.encode()
    with pytest.raises(ReceiptError) as info:
        verify_receipt(receipt, trusted_key=stranger)
    assert info.value.reason == "untrusted_key" and info.value.values["trusted"] == stranger


def test_cli_verifies_a_receipt_without_a_database(receipt: dict, tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "receipt.json"
    path.write_text(json.dumps(receipt))
    empty = tmp_path / "nowhere"
    monkeypatch.setenv("TALLY_DATA_DIR", str(empty))
    runner = CliRunner()
    ok = runner.invoke(app, ["ledger", "verify-receipt", str(path)])
    assert ok.exit_code == 0, ok.output
    assert "receipt OK: entry 5" in ok.output
    assert not empty.exists()
    receipt["entry"] = receipt["entry"].replace("alice", "mallory")
    path.write_text(json.dumps(receipt))
    bad = runner.invoke(app, ["ledger", "verify-receipt", str(path)])
    assert bad.exit_code == 1 and "does not verify" in bad.output


def test_the_standalone_verifier_in_docs_agrees(receipt: dict, tmp_path: Path) -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "docs" / "verify_receipt.py"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(receipt))
    ok = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK: entry 5" in ok.stdout, ok.stderr
    receipt["inclusion_proof"][0] = _flip_b64(receipt["inclusion_proof"][0])
    path.write_text(json.dumps(receipt))
    for flags in ([], ["-O"]):  # checks must not be asserts that -O strips
        bad = subprocess.run([sys.executable, *flags, str(script), str(path)], capture_output=True, text=True)
        assert bad.returncode == 1 and "does NOT verify" in bad.stderr
