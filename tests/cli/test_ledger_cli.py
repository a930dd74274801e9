"""`tally ledger head|show|prove|verify` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import append_notes
from typer.testing import CliRunner

from tally.cli.main import app
from tally.config import Settings
from tally.ledger import open_ledger, verify_receipt
from tally.store import open_store

runner = CliRunner()


def seed(settings: Settings, n: int = 9) -> None:
    store = open_store(settings)
    append_notes(open_ledger(settings, store), n)
    store.dispose()


def test_head_show_prove_verify(settings: Settings, tmp_path: Path) -> None:
    seed(settings)
    head = runner.invoke(app, ["ledger", "head"])
    assert head.exit_code == 0, head.output
    info = json.loads(head.output)
    assert info["size"] == 10 and info["checkpoint"].startswith("tally.local/ledger\n10\n")

    show = runner.invoke(app, ["ledger", "show", "4"])
    assert show.exit_code == 0 and json.loads(show.output)["payload"] == {"text": "note-3"}

    proof = json.loads(runner.invoke(app, ["ledger", "prove", "4"]).output)
    assert proof["tree_size"] == 10 and len(proof["inclusion_proof"]) == 4

    consistency = json.loads(runner.invoke(app, ["ledger", "prove", "--consistency", "3"]).output)
    assert consistency["first"] == 3 and consistency["second"] == 10

    out = tmp_path / "r.json"
    assert runner.invoke(app, ["ledger", "prove", "4", "--receipt", str(out)]).exit_code == 0
    assert verify_receipt(json.loads(out.read_text())).seq == 4

    ok = runner.invoke(app, ["ledger", "verify"])
    assert ok.exit_code == 0 and "ledger OK: 10 entries" in ok.output


def test_errors_are_one_clear_line(settings: Settings, monkeypatch) -> None:
    seed(settings, 2)
    missing = runner.invoke(app, ["ledger", "show", "99"])  # not found: exit 4 (docs/errors.md)
    assert missing.exit_code == 4 and "no ledger entry 99" in missing.output
    too_big = runner.invoke(app, ["ledger", "prove", "1", "--size", "50"])
    assert too_big.exit_code == 1 and "outside" in too_big.output
    monkeypatch.setenv("TALLY_SERVER__PORT", "not-a-port")
    bad = runner.invoke(app, ["ledger", "head"])
    assert bad.exit_code == 1 and "invalid setting server.port" in bad.output
