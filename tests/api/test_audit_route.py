"""GET /v1/audit: admins get the report, with the first divergence or null."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import text

from tally.api import create_app
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store


def test_admins_get_the_audit_report(settings: Settings) -> None:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        admin, _ = create_account(s, ledger, "root", ["admin"])
        _, token = create_api_key(s, ledger, admin)
        other, _ = create_account(s, ledger, "carl", ["consumer"])
        _, other_token = create_api_key(s, ledger, other)
    with TestClient(create_app(settings)) as client:
        headers = {"Authorization": f"Bearer {token}"}
        body = client.get("/v1/audit", headers=headers).json()
        assert body["clean"] is True and body["divergence"] is None
        assert body["tables"]["accounts"] == 2 and body["entries"] == ledger.size()
        assert client.get("/v1/audit", headers={"Authorization": f"Bearer {other_token}"}).status_code == 403
        assert client.get("/v1/audit").status_code == 401

        with store.transaction() as s:
            s.execute(text("UPDATE accounts SET roles = 'admin' WHERE name = 'carl'"))
        body = client.get("/v1/audit", headers=headers).json()
        assert body["clean"] is False
        assert body["divergence"] == {"table": "accounts", "key": other.address, "field": "roles",
                                      "expected": "consumer", "found": "admin", "seq": 3}  # fmt: skip
    store.dispose()
