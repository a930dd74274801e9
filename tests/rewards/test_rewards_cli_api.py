"""`tally rewards ...` and /v1/rewards as a user meets them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.rewards.conftest import ALICE, BOB, make_record
from typer.testing import CliRunner

from tally.api import create_app, rewards_routes
from tally.cli import rewards as rewards_cli
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import Ledger
from tally.rewards import DEFAULT_POLICY, accrue, verify_payout

runner = CliRunner()


def seed(ledger: Ledger, *inferences: str) -> None:
    with ledger.store.transaction() as s:
        for i in inferences:
            accrue(s, ledger, make_record(i), DEFAULT_POLICY)


def cli(*args: str) -> tuple[int, str]:
    result = runner.invoke(rewards_cli.app, list(args))
    return result.exit_code, result.output


def test_cli_policy_statement_epoch_and_proof(ledger: Ledger, settings: Settings, tmp_path: Path) -> None:
    code, out = cli("policy")
    assert code == 0 and json.loads(out)["source"] == "built-in"
    assert json.loads(out)["policy"]["split"] == {"data": 0.6, "developer": 0.2, "platform": 0.15, "reserve": 0.05}

    code, out = cli("epoch", "close")
    assert code == 5 and "nothing to pay" in out  # a conflict: the state forbids it now

    seed(ledger, "cli-1", "cli-2")
    code, out = cli("statement", ALICE, "--json")
    assert code == 0
    st = json.loads(out)
    assert st["accrued"] == "900" and [i["epoch"] for i in st["items"]] == ["unpaid", "unpaid"]
    code, out = cli("statement", ALICE)
    assert code == 0 and "cli-1" in out and "unpaid 900" in out

    code, out = cli("epoch", "close")
    assert code == 0 and "epoch 1 closed" in out
    code, out = cli("proof", ALICE)
    assert code == 0
    proof = json.loads(out)
    assert proof["amount"] == "900" and proof["epoch"] == 1
    assert verify_payout(proof["root"], proof["index"], proof["account"], int(proof["amount"]), proof["proof"])
    code, out = cli("proof", ALICE, "--epoch", "3")
    assert code == 4 and "no epoch 3" in out  # not_found

    code, out = cli("balances", "--json")
    assert code == 0 and {b["account"]: b["paid"] for b in json.loads(out)}[BOB] == "300"
    code, out = cli("epoch", "list", "--json")
    assert code == 0 and [e["epoch"] for e in json.loads(out)] == [1]

    bad = tmp_path / "bad.yaml"
    bad.write_text("price_per_1k_tokens: 1\nsplit: {data: 1, developer: 0, platform: 0, reserve: 0}\n")
    result = runner.invoke(rewards_cli.app, ["policy"], env={"TALLY_REWARDS__POLICY": str(bad)})
    # the fee policy is the server's configuration: an internal error (exit 70), as it is a 500 over HTTP
    assert result.exit_code == 70 and "bad.yaml line 1: field accounts: Field required" in result.output


@pytest.fixture
def client(ledger: Ledger, settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    headers = {}
    with ledger.store.transaction() as s:
        for name, roles in (("root", ["admin"]), ("carol", ["contributor"])):
            account, _ = create_account(s, ledger, name, roles)
            _, token = create_api_key(s, ledger, account)
            headers[name] = {"Authorization": f"Bearer {token}"}
    app = create_app(settings)
    app.include_router(rewards_routes.router)
    with TestClient(app) as c:
        yield c, headers


def test_api_statement_epochs_and_proofs(client, ledger: Ledger) -> None:
    c, h = client
    assert c.post("/v1/rewards/epochs", headers=h["root"]).status_code == 409
    seed(ledger, "api-1")
    assert c.post("/v1/rewards/epochs").status_code == 401
    assert c.post("/v1/rewards/epochs", headers=h["carol"]).status_code == 403

    st = c.get(f"/v1/rewards/statement/{ALICE.lower()}").json()
    assert st["account"] == ALICE and st["unpaid"] == "450" and st["items"][0]["inference"] == "api-1"
    assert c.get("/v1/rewards/statement/nobody").status_code == 400

    closed = c.post("/v1/rewards/epochs", headers=h["root"])
    assert closed.status_code == 200, closed.text
    epoch = closed.json()
    assert epoch["epoch"] == 1 and epoch["total"] == "1000"
    assert c.get("/v1/rewards/epochs").json()["data"] == [epoch]

    proof = c.get(f"/v1/rewards/epochs/1/proofs/{ALICE}").json()
    assert proof["root"] == epoch["root"] and proof["amount"] == "450"
    assert verify_payout(proof["root"], proof["index"], proof["account"], int(proof["amount"]), proof["proof"])
    missing = c.get(f"/v1/rewards/epochs/2/proofs/{ALICE}")
    assert missing.status_code == 404 and "no epoch 2" in missing.json()["error"]["message"]
