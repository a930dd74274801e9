"""/v1/chat/completions with retrieval: keys decide what is retrieved, aliases included; citations come back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_app
from tests.datanets.conftest import World, facts, world  # noqa: F401 (world is a fixture)
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 (tiny is a fixture)

from tally.config import RagAlias
from tally.datanets import snapshots
from tally.identity import Principal, create_api_key, resolve_account


def bearer(w: World, who: Principal) -> dict[str, str]:
    with w.tx() as s:
        _, token = create_api_key(s, w.ledger, resolve_account(s, who.address))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def rag_client(tiny: TinySetup, world: World) -> Iterator[tuple[TestClient, World]]:  # noqa: F811
    world.create("secret", visibility="private", policy="open", uses=["rag"])
    world.upload(world.owner, "secret", facts("s", 6))
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, "secret")
    world.settings.rag.aliases["secret-qa"] = RagAlias(model="tiny-base", datanets=["secret"], top_k=3)
    engine = make_engine(tiny, max_model_len=1024, max_tokens_per_step=1024)  # room for numbered sources
    with TestClient(make_app(engine, world.settings, world.ledger.store)) as client:
        yield client, world


def ask(client: TestClient, headers: dict[str, str], **body: object):
    payload = {"model": "tiny-base", "messages": [{"role": "user", "content": "where was person 3 of s born?"}],
               "max_tokens": 8, "temperature": 0, **body}  # fmt: skip
    return client.post("/v1/chat/completions", json=payload, headers=headers)


def test_private_datanets_are_never_retrieved_without_a_grant(rag_client) -> None:
    client, w = rag_client
    rag = {"datanets": ["secret"], "top_k": 3}
    assert ask(client, {}, rag=rag).status_code == 401
    consumer = bearer(w, w.consumer)
    before = w.ledger.size()
    assert ask(client, consumer, rag=rag).status_code == 404
    assert ask(client, consumer, model="secret-qa").status_code == 404  # the alias does not open the door
    assert w.ledger.size() == before  # a refused retrieval records nothing

    answer = ask(client, bearer(w, w.owner), rag=rag)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    entries = [json.loads(b) for b in w.ledger.entries(before, 100)]
    retrievals = [e for e in entries if e["type"] == "rag.retrieval"]
    assert len(retrievals) == 1 and len(retrievals[0]["payload"]["chunks"]) == 3
    assert all(c["contributor"] == w.owner.address for c in retrievals[0]["payload"]["chunks"])
    # the private datanet is named by its ledger commitment, never by its name
    assert "secret" not in json.dumps(retrievals[0]["payload"])
    assert {c["datanet"] for c in retrievals[0]["payload"]["chunks"]} == {
        retrievals[0]["payload"]["datanets"][0]["datanet"]
    }
    assert retrievals[0]["payload"]["datanets"][0]["datanet"].startswith("hmac-sha256:")
    retrieved = {c["row_hash"] for c in retrievals[0]["payload"]["chunks"]}
    # citations may only name retrieved rows, by their source number; without attribution they are the markers
    assert {c["row_hash"] for c in body["citations"]} <= retrieved
    assert all(1 <= c["source"] <= 3 and c["marker"] and c["measured"] is None for c in body["citations"])

    via_alias = ask(client, bearer(w, w.owner), model="secret-qa")
    assert via_alias.status_code == 200 and via_alias.json()["model"] == "tiny-base"
    streamed = ask(client, bearer(w, w.owner), rag=rag, stream=True)
    assert streamed.status_code == 400 and "stream" in streamed.json()["error"]["message"]
