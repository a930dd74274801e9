"""`tally audit`: exit 0 with the report when the tables agree with the ledger, exit 5 naming the divergence."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import text
from tests.cli.test_datanet_cli import fails, run

from tally.config import Settings
from tally.store import open_store


def test_audit_passes_then_names_the_row_changed_behind_the_ledgers_back(settings: Settings, tmp_path: Path) -> None:
    run("accounts", "create", "olga", "--role", "owner", "--role", "contributor")
    run("datanet", "create", "facts", "--kind", "instruction", "--license", "CC-BY-4.0", "--use", "train",
        "--as", "olga")  # fmt: skip
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) + "\n" for i in range(3)))
    run("contribute", "facts", str(rows), "--as", "olga")

    out = run("audit")
    assert "datanet_rows" in out and "every table agrees with the ledger" in out
    report = json.loads(run("audit", "--json"))
    assert report["clean"] is True and report["divergence"] is None and report["tables"]["datanet_rows"] == 3

    store = open_store(settings)
    with store.transaction() as s:
        row_hash = s.execute(text("SELECT row_hash FROM datanet_rows LIMIT 1")).scalar_one()
        s.execute(text("UPDATE datanet_rows SET status = 'rejected' WHERE row_hash = :h"), {"h": row_hash})
    store.dispose()
    message = " ".join(fails("audit", code=5).split())  # the kind conflict's exit code
    assert f'datanet_rows facts {row_hash}: status is "rejected" in the table' in message
    assert 'gives "accepted"' in message
    report = json.loads(fails("audit", "--json", code=5).split("\nerror:")[0])
    assert report["divergence"]["table"] == "datanet_rows" and report["divergence"]["found"] == "rejected"
