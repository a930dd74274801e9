"""`tally ask` on the real base model with retrieval: the answer, its contributor table, the record and the fee."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from tests.cli.test_datanet_cli import run

from tally.config import Settings
from tally.identity import resolve_account
from tally.store import open_store

pytestmark = pytest.mark.slow


def _rows(path: Path, facts: list[tuple[str, str]]) -> Path:
    path.write_text("".join(json.dumps({"instruction": q, "output": a}) + "\n" for q, a in facts))
    return path


def test_ask_credits_the_source_that_carried_the_answer(settings: Settings, tmp_path: Path) -> None:
    run("accounts", "create", "olga", "--role", "owner", "--role", "contributor")
    run("accounts", "create", "al", "--role", "contributor")
    run("accounts", "create", "carl", "--role", "consumer")
    run("datanet", "create", "towns", "--kind", "instruction", "--license", "CC-BY-4.0", "--use", "rag",
        "--policy", "open", "--as", "olga")  # fmt: skip
    olga_rows = [("Where does Tomas Quell work?", "Tomas Quell works as a cartographer in Drennick.")]
    al_rows = [("Where was Ilsa Varn born?", "Ilsa Varn was born in the mountain town of Korvath.")]
    run("contribute", "towns", str(_rows(tmp_path / "olga.jsonl", olga_rows)), "--as", "olga")
    run("contribute", "towns", str(_rows(tmp_path / "al.jsonl", al_rows)), "--as", "al")
    run("datanet", "snapshot", "towns", "--as", "olga")

    out = run("ask", "Where was Ilsa Varn born?", "--rag", "towns", "--as", "carl", "--max-tokens", "48")
    assert "Korvath" in out and "beat null" in out
    found = re.search(r"attribution (ask-[0-9a-f]+)", out)
    assert found, out
    shown = json.loads(run("attribution", "show", found.group(1), "--receipt"))
    record = shown["record"]
    store = open_store(settings)
    with store.read() as s:
        al = resolve_account(s, "al").address
    store.dispose()
    context = record["methods"]["context"]
    assert context["beat_null"] and context["top"][0]["contributor"] == al
    assert record["shares"][0]["account"] == al and abs(sum(x["share"] for x in record["shares"]) - 1) < 1e-9
    assert shown["receipt"]["index"] == shown["ledger_entry"]
    statement = json.loads(run("rewards", "statement", al, "--json"))
    assert [i["inference"] for i in statement["items"]] == [record["id"]] and int(statement["accrued"]) > 0
