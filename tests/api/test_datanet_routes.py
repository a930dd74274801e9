"""The datanet and identity routes with real bearer keys: the permission matrix over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tally.api import create_app
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store


def alpaca(n: int, prefix: str = "q") -> bytes:
    return "".join(
        json.dumps({"instruction": f"{prefix} {i}?", "output": f"answer {i}"}) + "\n" for i in range(n)
    ).encode()


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    headers = {}
    with store.transaction() as s:
        for name, roles in [("admin", ["admin"]), ("olga", ["owner"]), ("alice", ["contributor"]),
                            ("dev", ["developer"]), ("carl", ["consumer"])]:  # fmt: skip
            account, _ = create_account(s, ledger, name, roles)
            _, token = create_api_key(s, ledger, account)
            headers[name] = {"Authorization": f"Bearer {token}"}
    store.dispose()
    with TestClient(create_app(settings)) as client:
        yield client, headers


def test_datanet_lifecycle_over_http(api) -> None:
    client, h = api
    body = {"name": "med-qa", "kind": "instruction", "license": "CC-BY-4.0", "uses": ["train", "rag"]}
    assert client.post("/v1/datanets", json=body, headers=h["alice"]).status_code == 403
    created = client.post("/v1/datanets", json=body, headers=h["olga"])
    assert created.status_code == 201, created.text
    up = client.post("/v1/datanets/med-qa/contributions", files={"file": ("rows.jsonl", alpaca(4))}, headers=h["alice"])
    assert up.status_code == 201, up.text
    contribution = up.json()
    assert contribution["status"] == "pending" and contribution["row_count"] == 4

    bad = alpaca(3).replace(b'"answer 1"', b"")
    refused = client.post("/v1/datanets/med-qa/contributions", files={"file": ("bad.jsonl", bad)}, headers=h["alice"])
    assert refused.status_code == 400 and "bad.jsonl line 2" in refused.json()["error"]["message"]

    review = {"decision": "accept", "contribution": contribution["id"]}
    assert client.post("/v1/datanets/med-qa/review", json=review, headers=h["alice"]).status_code == 403
    assert client.post("/v1/datanets/med-qa/review", json=review, headers=h["olga"]).json()["changed"] == 4
    snap = client.post("/v1/datanets/med-qa/snapshots", headers=h["olga"]).json()
    assert snap["row_count"] == 4 and snap["contributors"] == {contribution["contributor"]: 4}
    data = client.get(f"/v1/datanets/med-qa/snapshots/{snap['id'][:10]}/data.jsonl", headers=h["carl"])
    assert data.status_code == 200 and len(data.text.splitlines()) == 4
    card = client.get("/v1/datanets/med-qa/snapshots/latest/README.md", headers=h["carl"]).text
    assert snap["id"] in card
    rows = client.get("/v1/datanets/med-qa/rows", headers=h["carl"]).json()["data"]
    assert len(rows) == 4 and all(r["status"] == "accepted" for r in rows)


def test_private_datanets_and_access_requests_over_http(api) -> None:
    client, h = api
    body = {"name": "secret", "kind": "instruction", "license": "MIT", "uses": ["train"], "visibility": "private"}
    assert client.post("/v1/datanets", json=body, headers=h["olga"]).status_code == 201
    assert client.get("/v1/datanets/secret", headers=h["carl"]).status_code == 404
    assert client.get("/v1/datanets", headers=h["carl"]).json()["data"] == []
    req = client.post("/v1/datanets/secret/access-requests", json={"uses": ["train"], "purpose": "fine-tune"},
                      headers=h["dev"])  # fmt: skip
    assert req.status_code == 201
    rid = req.json()["id"]
    assert client.post(f"/v1/datanets/secret/access-requests/{rid}/grant", json={}, headers=h["dev"]).status_code == 404
    granted = client.post(f"/v1/datanets/secret/access-requests/{rid}/grant", json={"reason": "ok"}, headers=h["olga"])
    assert granted.json()["status"] == "granted"
    assert client.get("/v1/datanets/secret", headers=h["dev"]).status_code == 200


def test_keys_missing_revoked_and_self_service(api) -> None:
    client, h = api
    assert client.get("/v1/datanets").status_code == 401
    assert client.get("/v1/datanets", headers={"Authorization": "Bearer tly_nope_nope"}).status_code == 401
    me = client.get("/v1/accounts/me", headers=h["dev"]).json()
    assert me["name"] == "dev" and me["roles"] == ["developer"]
    new = client.post("/v1/keys", json={"label": "ci", "expires_in_days": 1}, headers=h["dev"]).json()
    auth = {"Authorization": f"Bearer {new['token']}"}
    assert client.get("/v1/accounts/me", headers=auth).status_code == 200
    assert client.delete(f"/v1/keys/{new['id']}", headers=h["dev"]).json()["revoked_at"]
    revoked = client.get("/v1/accounts/me", headers=auth)
    assert revoked.status_code == 401 and "revoked" in revoked.json()["error"]["message"]
    escalate = client.post("/v1/keys", json={"roles": ["admin"]}, headers=h["dev"])
    assert escalate.status_code == 403 and "does not hold role 'admin'" in escalate.json()["error"]["message"]
    made = client.post("/v1/accounts", json={"name": "newbie", "roles": ["consumer"]}, headers=h["admin"])
    assert made.status_code == 201 and made.json()["private_key"]
    assert client.post("/v1/accounts", json={"name": "x", "roles": ["consumer"]}, headers=h["dev"]).status_code == 403
