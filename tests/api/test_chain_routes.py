"""/v1/chain and the on-chain rewards routes, and the server's anchorer, on the embedded chain."""

from __future__ import annotations

import time

import pytest
from eth_account import Account
from fastapi.testclient import TestClient
from tests.rewards.conftest import make_record

from tally.api import create_app
from tally.config import Settings, load_settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.rewards import DEFAULT_POLICY, accrue
from tally.store import open_store


def test_the_server_anchors_by_default_and_serves_the_chain(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TALLY_CHAIN__ENABLED", "true")
    chained = load_settings()
    alice = Account.create()
    store = open_store(chained)
    ledger = open_ledger(chained, store)
    with store.transaction() as s:
        root, _ = create_account(s, ledger, "root", ["admin"])
        _, token = create_api_key(s, ledger, root)
        carol, _ = create_account(s, ledger, "carol", ["contributor"])
        _, carol_token = create_api_key(s, ledger, carol)
        accrue(s, ledger, make_record("r-1", {alice.address: 1.0}), DEFAULT_POLICY)
    store.dispose()
    admin, contributor = {"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {carol_token}"}

    with TestClient(create_app(chained)) as c:
        deadline = time.monotonic() + 60
        while True:  # the anchorer anchors what is unanchored soon after start
            status = c.get("/v1/chain/status")
            assert status.status_code == 200, status.text
            if status.json()["log"]["anchored_size"] > 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        body = status.json()
        assert body["log"]["anchored_size"] == body["log"]["size"] > 0
        assert body["anchorer"]["anchors_sent"] >= 1 and body["anchorer"]["last_error"] is None

        receipt = c.get("/v1/ledger/entries/1/receipt").json()
        assert receipt["anchor"]["tree_size"] == body["log"]["anchored_size"]

        assert c.post("/v1/chain/anchor").status_code == 401
        assert c.post("/v1/chain/anchor", headers=contributor).status_code == 403
        anchored = c.post("/v1/chain/anchor", headers=admin)
        assert anchored.status_code == 200, anchored.text
        assert c.get("/v1/chain/verify", headers=admin).json()["ok"] is True
        assert c.get("/v1/chain/verify").status_code == 401

        assert c.post("/v1/rewards/epochs", headers=admin).status_code == 200
        assert c.post("/v1/rewards/epochs/1/settle", headers=contributor).status_code == 403
        settled = c.post("/v1/rewards/epochs/1/settle", headers=admin)
        assert settled.status_code == 200 and settled.json()["transaction"], settled.text
        again = c.post("/v1/rewards/epochs/1/settle", headers=admin)
        assert again.status_code == 200 and again.json()["transaction"] is None
        assert c.post("/v1/rewards/epochs/2/settle", headers=admin).status_code == 404

        claim = c.get(f"/v1/rewards/claims/{alice.address}").json()
        assert claim["chain_id"] == 31337 and claim["data"].startswith("0x") and claim["proof"]["epoch"] == 1
        onchain = c.get(f"/v1/rewards/onchain/{alice.address}").json()
        assert onchain["balance"] == "0" and onchain["unclaimed"][0]["settled"] is True


def test_chain_routes_say_when_the_chain_is_off(settings: Settings) -> None:
    with TestClient(create_app(settings)) as c:
        off = c.get("/v1/chain/status")
        assert off.status_code == 503 and "chain.enabled" in off.json()["error"]["message"]
