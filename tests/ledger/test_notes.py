"""Signed checkpoints in the C2SP signed-note format and the log key file."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import pytest

from tally.ledger.notes import Checkpoint, NoteError, Verifier, load_or_create_signer, open_checkpoint


def test_note_layout_key_id_and_round_trip(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path / "k", "example.com/log")
    cp = Checkpoint("example.com/log", 42, hashlib.sha256(b"root").digest())
    note = signer.sign(cp.text())
    body, sig_line = note.split("\n\n")
    assert body == f"example.com/log\n42\n{base64.b64encode(cp.root).decode()}"
    assert sig_line.startswith("\u2014 example.com/log ") and note.endswith("\n")
    pub = signer.verifier.public_key
    expected_id = hashlib.sha256(b"example.com/log\n\x01" + pub).digest()[:4]
    assert base64.b64decode(sig_line.split(" ")[-1])[:4] == expected_id
    vkey = signer.verifier.encode()
    blob = base64.b64encode(b"\x01" + pub).decode()
    assert vkey == f"example.com/log+{expected_id.hex()}+{blob}"
    assert open_checkpoint(note, Verifier.parse(vkey), origin="example.com/log") == cp


def test_tampered_notes_and_wrong_keys_fail(tmp_path: Path) -> None:
    signer = load_or_create_signer(tmp_path / "k", "log")
    other = load_or_create_signer(tmp_path / "k2", "log")
    note = signer.sign(Checkpoint("log", 7, b"\x00" * 32).text())
    with pytest.raises(NoteError):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), signer.verifier)
    with pytest.raises(NoteError, match="no signature by log"):
        open_checkpoint(note, other.verifier)
    with pytest.raises(NoteError, match="origin"):
        open_checkpoint(note, signer.verifier, origin="another")
    with pytest.raises(NoteError, match="signature block"):
        open_checkpoint("log\n7\nAAAA\n", signer.verifier)
    with pytest.raises(NoteError, match="key id"):
        Verifier.parse(signer.verifier.encode().replace("+", "+00", 1))


def test_key_is_created_once_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "log.key"
    first = load_or_create_signer(path, "log")
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_signer(path, "log").verifier == first.verifier
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        load_or_create_signer(path, "log")
