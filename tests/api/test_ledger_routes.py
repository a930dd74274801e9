"""The ledger routes: everything a client gets back verifies against the signed checkpoint."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.conftest import append_notes

from tally.api import create_app
from tally.config import Settings
from tally.ledger import merkle, open_ledger
from tally.ledger.notes import Verifier, open_checkpoint
from tally.store import open_store


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    store = open_store(settings)
    append_notes(open_ledger(settings, store), 20)
    store.dispose()
    with TestClient(create_app(settings)) as c:
        yield c


def b64(s: str) -> bytes:
    return base64.b64decode(s)


def test_health(client: TestClient) -> None:
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["ledger_size"] == 21


def test_checkpoint_entry_and_proofs_verify(client: TestClient) -> None:
    cp = client.get("/v1/ledger/checkpoint").json()
    verifier = Verifier.parse(cp["verifier_key"])
    checkpoint = open_checkpoint(cp["checkpoint"], verifier, origin=cp["origin"])
    assert checkpoint.size == cp["size"] == 21

    entry = client.get("/v1/ledger/entries/7").json()
    assert entry["entry"]["seq"] == 7 and entry["entry"]["payload"] == {"text": "note-6"}
    leaf = merkle.leaf_hash(entry["body"].encode())
    assert b64(entry["leaf_hash"]) == leaf

    inc = client.get("/v1/ledger/proofs/inclusion", params={"index": 7, "size": 21}).json()
    merkle.verify_inclusion(7, 21, leaf, [b64(p) for p in inc["inclusion_proof"]], checkpoint.root)

    con = client.get("/v1/ledger/proofs/consistency", params={"first": 9, "second": 21}).json()
    proof = [b64(p) for p in con["consistency_proof"]]
    merkle.verify_consistency(9, 21, b64(con["first_root"]), checkpoint.root, proof)


def test_receipt_route(client: TestClient) -> None:
    from tally.ledger import verify_receipt

    receipt = client.get("/v1/ledger/entries/3/receipt").json()
    assert verify_receipt(receipt).seq == 3


@pytest.mark.parametrize(
    ("url", "status", "needle"),
    [
        ("/v1/ledger/entries/999", 404, "no ledger entry 999"),
        ("/v1/ledger/entries/999/receipt", 404, "no ledger entry 999"),
        ("/v1/ledger/proofs/inclusion?index=30", 400, "not below tree size"),
        ("/v1/ledger/proofs/inclusion?index=1&size=99", 400, "outside"),
        ("/v1/ledger/proofs/inclusion?index=-1", 400, "index"),
        ("/v1/ledger/proofs/consistency?first=30&second=21", 400, "no consistency proof"),
        ("/v1/ledger/proofs/consistency?first=x", 400, "first"),
    ],
)
def test_bad_requests_get_clear_openai_style_errors(client: TestClient, url: str, status: int, needle: str) -> None:
    response = client.get(url)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"] and error["type"]
