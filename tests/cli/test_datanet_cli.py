"""The datanet CLI as a user drives it, from accounts to an exported snapshot."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from tally.cli.main import app
from tally.config import Settings

runner = CliRunner()


def run(*args: str) -> str:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, f"tally {' '.join(args)}\n{result.output}"
    return result.output


def fails(*args: str, code: int = 1) -> str:
    """The output of a command that must fail with exit `code` (its error's kind: docs/errors.md)."""
    result = runner.invoke(app, list(args))
    assert result.exit_code == code, result.output
    return result.output


def test_accounts_datanet_contribute_signed_review_snapshot_export(settings: Settings, tmp_path: Path) -> None:
    run("accounts", "create", "olga", "--role", "owner", "--role", "contributor")
    run("accounts", "create", "dev", "--role", "developer")
    assert "olga" in run("accounts", "list")
    token = run("keys", "create", "--as", "olga", "--label", "laptop").splitlines()[-1]
    assert token.startswith("tly_")

    run("datanet", "create", "facts", "--kind", "instruction", "--license", "CC-BY-4.0", "--use", "train",
        "--use", "export", "--visibility", "private", "--as", "olga")  # fmt: skip
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(5)))
    out = run("contribute", "facts", str(rows), "--sign", "--as", "olga")
    assert "5 rows (alpaca), accepted, signed" in out
    assert "already in datanet" in fails("datanet", "contribute", "facts", str(rows), "--as", "olga", code=5)

    snap = json.loads(run("datanet", "snapshot", "facts", "--as", "olga"))
    assert snap["row_count"] == 5 and snap["version"] == 1
    more = tmp_path / "more.jsonl"
    more.write_text(json.dumps({"instruction": "q9", "output": "a9"}) + "\n")
    run("contribute", "facts", str(more), "--as", "olga")
    run("datanet", "snapshot", "facts", "--as", "olga")
    diff = json.loads(run("datanet", "diff", "facts", "v1", "--as", "olga"))
    assert len(diff["added"]) == 1 and diff["unchanged"] == 5

    assert "no datanet named 'facts'" in fails("datanet", "show", "facts", "--as", "dev", code=4)
    run("datanet", "request-access", "facts", "--use", "train", "--use", "export", "--purpose", "tuning", "--as", "dev")
    assert "pending" in run("datanet", "requests", "facts", "--as", "olga")
    assert "granted" in run("datanet", "grant", "facts", "1", "--as", "olga")
    out_dir = tmp_path / "export"
    run("datanet", "export", "facts", "--out", str(out_dir), "--as", "dev")
    assert len((out_dir / "data.jsonl").read_text().splitlines()) == 6
    assert "ledger OK" in run("ledger", "verify")


def test_cli_errors_are_one_line(settings: Settings, tmp_path: Path) -> None:
    run("accounts", "create", "olga", "--role", "owner")
    run("accounts", "create", "al", "--role", "contributor")
    assert "say which account acts" in fails("datanet", "list")
    assert "not a valid SPDX expression" in fails(
        "datanet", "create", "x", "--kind", "chat", "--license", "Nope-1.0", "--use", "train", "--as", "olga"
    )
    run("datanet", "create", "x", "--kind", "instruction", "--license", "MIT", "--use", "train", "--as", "olga")
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"instruction": "q", "output": "a"}\n{"instruction": "q2", "output": \n')
    out = fails("contribute", "x", str(bad), "--as", "al")
    assert "bad.jsonl line 2" in out and "Traceback" not in out


def test_ask_with_rag_refuses_a_datanet_the_account_may_not_use(settings: Settings) -> None:
    run("accounts", "create", "olga", "--role", "owner")
    run("accounts", "create", "carl", "--role", "consumer")
    run("datanet", "create", "hidden", "--kind", "instruction", "--license", "MIT", "--use", "rag",
        "--visibility", "private", "--as", "olga")  # fmt: skip
    run("datanet", "create", "no-rag", "--kind", "instruction", "--license", "MIT", "--use", "train", "--as", "olga")
    assert "no datanet named 'hidden'" in fails("ask", "hi", "--rag", "hidden", "--as", "carl", code=4)
    assert "does not permit use 'rag'" in fails("ask", "hi", "--rag", "no-rag", "--as", "carl", code=3)


def test_ask_refuses_an_unknown_attribution_mode_before_answering(settings: Settings) -> None:
    assert "--attribution 'most' is not one of off, fast, full" in fails("ask", "hi", "--attribution", "most")


def test_ask_names_an_unknown_model_before_loading_anything(settings: Settings) -> None:
    assert "no model named 'my-adapter'" in fails("ask", "hi", "--model", "my-adapter", code=4)
