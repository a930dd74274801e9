"""An upload whose only fault is repeated rows: refused with every repeated line listed, or, asked to, stored without
them and each dropped line reported. The same through the service, the API (`drop_duplicates`) and the CLI
(`--drop-duplicates`); and every bad line of a refused file is listed, not only the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tally.api import create_app
from tally.cli.main import app as cli
from tally.config import Settings
from tally.datanets import contribute, service
from tally.datanets.errors import DatanetError
from tally.datanets.formats import UploadError, parse_upload
from tally.identity import Principal, create_account, create_api_key
from tally.ledger import Ledger
from tally.store import Store


def _lines(*numbers: int) -> bytes:
    return "".join(json.dumps({"instruction": f"q{n}", "output": f"a{n}"}) + "\n" for n in numbers).encode()


def test_the_parser_lists_every_bad_line_and_drops_repeats_on_request() -> None:
    data = b'{"instruction": "q1", "output": "a1"}\n[2]\n{bad\n{"instruction": "", "output": "a"}\n'
    with pytest.raises(UploadError) as refused:
        parse_upload(data, "rows.jsonl", kind="instruction")
    assert refused.value.line == 2 and "not an object" in str(refused.value)  # the first bad line's message
    problems = refused.value.values["problems"]
    assert [(p["line"], p["field"]) for p in problems] == [(2, None), (3, None), (4, "instruction")]
    assert "invalid JSON" in problems[1]["problem"] and refused.value.values["more_problems"] is False

    repeated = _lines(1, 2, 1, 2, 3)
    with pytest.raises(UploadError) as only_repeats:
        parse_upload(repeated, "rows.jsonl", kind="instruction")
    assert [p["duplicate_of_line"] for p in only_repeats.value.values["problems"]] == [1, 2]
    parsed = parse_upload(repeated, "rows.jsonl", kind="instruction", drop_duplicates=True)
    assert [r.line for r in parsed.rows] == [1, 2, 5]
    assert [(d.line, d.reason) for d in parsed.dropped] == [(3, "repeats line 1"), (4, "repeats line 2")]


@pytest.fixture
def owner(store: Store, ledger: Ledger) -> Principal:
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "olga", ["owner", "contributor"])
        who = Principal(account.address, "olga", frozenset({"owner", "contributor"}))
        service.create_datanet(
            s, ledger, who, "facts", kind="instruction", license="MIT", uses=["train"], max_upload_bytes=10_000,
            max_rows_per_day=100,
        )  # fmt: skip
    return who


def test_the_service_drops_rows_the_datanet_holds_and_signs_what_it_keeps(
    settings: Settings, store: Store, ledger: Ledger, owner: Principal
) -> None:
    with store.transaction() as s:
        contribute.contribute(s, ledger, owner, "facts", _lines(1, 2), "a.jsonl", settings=settings.datanets,
                              chain_id=settings.chain_id)  # fmt: skip
    with pytest.raises(DatanetError) as refused, store.transaction() as s:
        contribute.contribute(s, ledger, owner, "facts", _lines(2, 3, 1), "b.jsonl", settings=settings.datanets,
                              chain_id=settings.chain_id)  # fmt: skip
    assert refused.value.kind == "conflict"
    assert [p["line"] for p in refused.value.values["problems"]] == [1, 3]  # each stored row, not only the first
    with store.transaction() as s:
        request = contribute.prepare_signing(
            s, owner, "facts", _lines(2, 3, 3, 1), "b.jsonl", settings=settings.datanets, chain_id=settings.chain_id,
            drop_duplicates=True,
        )  # fmt: skip
        assert request.rows == 1 and request.typed_data["message"]["nonce"] == request.nonce
        assert request.typed_data["domain"] == {"name": "Tally", "version": "1", "chainId": settings.chain_id}
        result = contribute.contribute(
            s, ledger, owner, "facts", _lines(2, 3, 3, 1), "b.jsonl", settings=settings.datanets,
            chain_id=settings.chain_id, drop_duplicates=True,
        )  # fmt: skip
    assert result.row_count == 1 and result.content_root == request.content_root
    assert [(d["line"], d["reason"][:16]) for d in result.dropped] == [
        (1, "already in datan"), (3, "repeats line 2"), (4, "already in datan"),
    ]  # fmt: skip
    with pytest.raises(DatanetError, match="nothing to add"), store.transaction() as s:
        contribute.contribute(s, ledger, owner, "facts", _lines(1), "c.jsonl", settings=settings.datanets,
                              chain_id=settings.chain_id, drop_duplicates=True)  # fmt: skip


def test_the_api_lists_problems_and_drops_on_request(settings: Settings, store: Store, ledger: Ledger,
                                                     owner: Principal) -> None:  # fmt: skip
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "alice", ["contributor"])
        _, token = create_api_key(s, ledger, account)
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        url = "/v1/datanets/facts/contributions"
        refused = client.post(url, headers=headers, files={"file": ("r.jsonl", _lines(1, 1, 2, 2))})
        assert refused.status_code == 400
        assert [p["line"] for p in refused.json()["error"]["problems"]] == [2, 4]
        kept = client.post(url, headers=headers, files={"file": ("r.jsonl", _lines(1, 1, 2, 2))},
                           data={"drop_duplicates": "true"})  # fmt: skip
        assert kept.status_code == 201, kept.text
        assert kept.json()["row_count"] == 2 and [d["line"] for d in kept.json()["dropped"]] == [2, 4]


def test_the_cli_flag(settings: Settings, tmp_path: Path) -> None:
    runner = CliRunner()

    def run(*args: str) -> tuple[int, str]:
        result = runner.invoke(cli, list(args))
        return result.exit_code, result.output

    run("accounts", "create", "olga", "--role", "owner", "--role", "contributor")
    run("datanet", "create", "facts", "--kind", "instruction", "--license", "MIT", "--use", "train", "--as", "olga")
    rows = tmp_path / "rows.jsonl"
    rows.write_bytes(_lines(1, 2, 1, 3, 2))
    code, out = run("contribute", "facts", str(rows), "--as", "olga")
    assert code != 0 and "line 3: line 3 repeats line 1" in out and "line 5: line 5 repeats line 2" in out
    assert "--drop-duplicates leaves them out" in out
    code, out = run("contribute", "facts", str(rows), "--drop-duplicates", "--sign", "--as", "olga")
    assert code == 0, out
    assert "3 rows (alpaca), accepted, signed" in out
    assert "dropped: line 3 repeats line 1" in out and "dropped: line 5 repeats line 2" in out
