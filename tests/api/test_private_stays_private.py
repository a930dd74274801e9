"""Keys, grants and private data over HTTP: a narrowed key does what its roles allow, an expiring key cannot outlive
itself, an anonymous reader cannot make the ledger sign, private datanets stay out of reputation and the ledger."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.api.test_datanet_routes import alpaca

from tally.api import create_app
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.ledger.tables import LedgerCheckpoint
from tally.store import Store, open_store

Headers = dict[str, dict[str, str]]


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[TestClient, Headers, Store]]:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    headers = {}
    with store.transaction() as s:
        for name, roles in [
            ("olga", ["owner", "contributor", "consumer"]),
            ("alice", ["contributor"]),
            ("carl", ["consumer"]),
        ]:
            account, _ = create_account(s, ledger, name, roles)
            _, token = create_api_key(s, ledger, account)
            headers[name] = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(settings)) as client:
        yield client, headers, store
    store.dispose()


def _datanet(client: TestClient, owner: dict[str, str], name: str, visibility: str = "public") -> None:
    body = {"name": name, "kind": "instruction", "license": "MIT", "uses": ["train"], "visibility": visibility}
    assert client.post("/v1/datanets", json=body, headers=owner).status_code == 201


def _narrowed(client: TestClient, h: dict[str, str], roles: list[str], days: float | None = None) -> dict[str, str]:
    made = client.post("/v1/keys", json={"roles": roles, "expires_in_days": days}, headers=h)
    assert made.status_code == 201, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def test_a_consumer_key_of_the_owner_cannot_review_or_grant(api) -> None:
    client, h, _ = api
    _datanet(client, h["olga"], "secret", "private")
    up = client.post("/v1/datanets/secret/members", json={"address": "0x" + "0" * 40}, headers=h["olga"])
    assert up.status_code == 404  # the owner's own key manages (no such account)
    consumer = _narrowed(client, h["olga"], ["consumer"])
    for path, body in [
        ("/v1/datanets/secret/review", {"decision": "accept", "contribution": "x"}),
        ("/v1/datanets/secret/access-requests/1/grant", {"reason": "ok"}),
        ("/v1/datanets/secret/snapshots", {}),
    ]:
        refused = client.post(path, json=body, headers=consumer)
        assert refused.status_code == 403, (path, refused.text)
        assert "only the owner of 'secret'" in refused.json()["error"]["message"]
    assert client.get("/v1/datanets/secret", headers=consumer).status_code == 200  # reading its own data stays


def test_an_expiring_key_cannot_mint_a_longer_lived_one(api) -> None:
    client, h, _ = api
    short = _narrowed(client, h["carl"], ["consumer"], days=1)
    forever = client.post("/v1/keys", json={}, headers=short)
    assert forever.status_code == 201
    parent = next(k for k in client.get("/v1/keys", headers=h["carl"]).json()["data"] if k["expires_at"])
    assert forever.json()["expires_at"] == parent["expires_at"]  # inherits the expiry, never "never"
    longer = client.post("/v1/keys", json={"expires_in_days": 30}, headers=short)
    assert longer.status_code == 403 and longer.json()["error"]["param"] == "expires_in_days"
    assert client.post("/v1/keys", json={"expires_in_days": 0.5}, headers=short).status_code == 201
    assert client.post("/v1/keys", json={"expires_in_days": 30}, headers=h["carl"]).status_code == 201


def test_an_anonymous_checkpoint_read_signs_nothing(api) -> None:
    client, h, store = api

    def signed() -> int:
        with store.read() as s:
            return int(s.execute(select(func.count()).select_from(LedgerCheckpoint)).scalar_one())

    first = client.get("/v1/ledger/checkpoint").json()  # a log's first checkpoint is signed once, on demand
    assert signed() == 1
    _datanet(client, h["olga"], "grows")  # the log grows
    for _ in range(3):
        assert client.get("/v1/ledger/checkpoint").json()["size"] == first["size"]
    assert signed() == 1
    fresh = client.get("/v1/ledger/checkpoint", headers=h["carl"]).json()
    assert fresh["size"] > first["size"] and signed() == 2
    assert client.get("/v1/ledger/checkpoint").json()["size"] == fresh["size"]


def test_reputation_leaves_out_private_datanets_the_caller_may_not_read(api) -> None:
    client, h, _ = api
    _datanet(client, h["olga"], "open-one")
    _datanet(client, h["olga"], "hidden", "private")
    client.post("/v1/datanets/hidden/members", json={"address": _address(client, h["alice"])}, headers=h["olga"])
    for slug, n in (("open-one", 2), ("hidden", 3)):
        up = client.post(f"/v1/datanets/{slug}/contributions", files={"file": ("r.jsonl", alpaca(n, slug))},
                         headers=h["alice"])  # fmt: skip
        assert up.status_code == 201, up.text
        review = {"decision": "accept", "contribution": up.json()["id"]}
        assert client.post(f"/v1/datanets/{slug}/review", json=review, headers=h["olga"]).status_code == 200
    path = f"/v1/contributors/{_address(client, h['alice'])}/reputation"
    assert client.get(path).json()["accepted"] == 2  # anonymous: public datanets only
    assert client.get(path, headers=h["carl"]).json()["accepted"] == 2
    assert client.get(path, headers=h["olga"]).json()["accepted"] == 5  # the owner reads both
    assert client.get(path, headers=h["alice"]).json()["accepted"] == 5  # a member reads both


def test_private_names_and_purposes_enter_the_ledger_as_commitments(api) -> None:
    client, h, _ = api
    _datanet(client, h["olga"], "sealed-name", "private")
    purpose = "a study of rare diseases in one clinic"
    req = client.post("/v1/datanets/sealed-name/access-requests", json={"uses": ["train"], "purpose": purpose},
                      headers=h["carl"])  # fmt: skip
    assert req.status_code == 201 and req.json()["purpose"] == purpose  # the text stays in the database
    grant = client.post(f"/v1/datanets/sealed-name/access-requests/{req.json()['id']}/grant", json={"reason": "ok"},
                        headers=h["olga"])  # fmt: skip
    assert grant.status_code == 200
    size = client.get("/v1/ledger/checkpoint", headers=h["olga"]).json()["size"]
    entries = [client.get(f"/v1/ledger/entries/{i}").json()["entry"] for i in range(size)]
    text = json.dumps(entries)
    assert "sealed-name" not in text and purpose not in text
    [requested] = [e for e in entries if e["type"] == "datanet.access_requested"]
    assert requested["v"] == 2 and requested["payload"]["purpose_commitment"].startswith("hmac-sha256:")
    named = {e["payload"]["datanet"] for e in entries if e["type"].startswith("datanet.")}
    assert len(named) == 1 and named.pop().startswith("hmac-sha256:")  # one datanet, one stable commitment


def _address(client: TestClient, h: dict[str, str]) -> str:
    return str(client.get("/v1/accounts/me", headers=h).json()["address"])
