"""Served answers carry attribution: the summary, the receipt header, the full record, the fee, streaming, `off`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_app
from tests.datanets.conftest import world  # noqa: F401 - fixture
from tests.factory.conftest import make_config, people, tiny_model  # noqa: F401 - fixtures

from tally.attribution.service import Attributor
from tally.attribution.tables import AttributionRow, RowInfluence
from tally.factory import service
from tally.ledger import verify_receipt
from tally.models import load_model, load_tokenizer


@pytest.fixture
def client(people, tiny_model: Path, tmp_path: Path) -> Iterator[TestClient]:  # noqa: F811
    from tally.engine import Engine, EngineConfig

    trained = service.train(people.settings, people.ledger, people.dev, make_config(tiny_model, tmp_path / "lora"))
    assert trained.finished
    engine = Engine(load_model(tiny_model), load_tokenizer(tiny_model), "tiny-base", EngineConfig(device="cpu"))
    engine.add_adapter("people-lora", trained.out_dir)
    settings = people.settings.model_copy(
        update={"attribution": people.settings.attribution.model_copy(update={"span_min_tokens": 2})}
    )
    attributor = Attributor(settings, people.ledger.store, tiny_model, "tiny-base")
    with TestClient(make_app(engine, settings, people.ledger.store, attributor)) as c:
        yield c


def _chat(**extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "Where was Ilsa Varn born?"}]
    return {"model": "people-lora", "messages": messages, "max_tokens": 8, "temperature": 0, **extra}


def _key(people, who) -> dict[str, str]:  # noqa: F811
    from tally.identity import create_api_key, resolve_account

    with people.tx() as s:
        _, token = create_api_key(s, people.ledger, resolve_account(s, who.address))
    return {"Authorization": f"Bearer {token}"}


def test_answer_carries_summary_and_receipt_and_the_record_reads_back(client: TestClient, people) -> None:  # noqa: F811
    consumer = _key(people, people.consumer)
    r = client.post("/v1/chat/completions", json=_chat(attribution="full"), headers=consumer)
    assert r.status_code == 200, r.text
    body = r.json()
    summary = body["attribution"]
    assert summary["id"] == body["id"] and summary["mode"] == "full"
    assert set(summary["methods"]) == {"spans", "representation", "gradient", "datainf", "tracin"}
    seq = int(r.headers["X-Tally-Receipt"])
    assert summary["receipt"] == seq
    full = client.get(f"/v1/attributions/{body['id']}", headers=consumer).json()
    entry = verify_receipt(full["receipt"])
    assert entry.seq == seq and entry.type == "attribution.inference_attributed"
    assert entry.payload["inference"] == body["id"]
    record = full["record"]
    # shares exist exactly when some method weighs in, and then sum to 1; the ledger carries the same shares
    weighed = [name for name, m in record["methods"].items() if m["weight"] > 0]
    assert bool(record["shares"]) == bool(weighed), (record["shares"], weighed)
    shares = {s["account"]: s["share"] for s in record["shares"]}
    assert entry.payload["shares"] == shares and sum(shares.values()) == pytest.approx(1.0 if shares else 0.0)
    assert entry.payload["beat_null"] == {name: m["beat_null"] for name, m in record["methods"].items()}
    assert record["credits"]["developer"] == people.dev.address
    statement = client.get(f"/v1/rewards/statement/{people.dev.address}").json()
    assert any(item["inference"] == body["id"] for item in statement["items"])
    assert client.get("/v1/attributions/chatcmpl-nope", headers=consumer).status_code == 404
    # the requester, the adapter's developer and admins read the record; anyone else gets the same 404 as for none
    assert client.get(f"/v1/attributions/{body['id']}", headers=_key(people, people.dev)).status_code == 200
    assert client.get(f"/v1/attributions/{body['id']}", headers=_key(people, people.admin)).status_code == 200
    stranger = client.get(f"/v1/attributions/{body['id']}", headers=_key(people, people.bob))
    assert stranger.status_code == 404
    assert stranger.json()["error"]["message"] == f"no attribution record for inference {body['id']!r}"
    assert client.get(f"/v1/attributions/{body['id']}").status_code == 401


def test_anonymous_answers_are_recorded_but_accrue_nothing(client: TestClient, people) -> None:  # noqa: F811
    """The reward-minting loop: an owner looping anonymous requests over their own data earns nothing."""
    from tally.rewards.tables import AccrualRow

    ids = []
    for _ in range(3):
        r = client.post("/v1/chat/completions", json=_chat(attribution="fast"))
        assert r.status_code == 200 and r.json()["attribution"]["id"] == r.json()["id"]
        ids.append(r.json()["id"])
    with people.ledger.store.read() as s:
        assert {row.id for row in s.query(AttributionRow)} == set(ids)  # each answer still has its record
        assert s.query(AccrualRow).count() == 0
    for who in (people.alice, people.bob, people.dev, people.owner):
        statement = client.get(f"/v1/rewards/statement/{who.address}").json()
        assert statement["items"] == [] and int(statement["accrued"]) == 0
    paid = client.post("/v1/chat/completions", json=_chat(attribution="fast"), headers=_key(people, people.consumer))
    statement = client.get(f"/v1/rewards/statement/{people.dev.address}").json()
    assert [item["inference"] for item in statement["items"]] == [paid.json()["id"]]


def test_off_writes_no_record_and_bad_mode_is_a_400(client: TestClient, people) -> None:  # noqa: F811
    r = client.post("/v1/chat/completions", json=_chat(attribution="off"))
    assert r.status_code == 200 and "attribution" not in r.json() and "X-Tally-Receipt" not in r.headers
    assert client.post("/v1/chat/completions", json=_chat(attribution="most")).status_code == 400
    with people.ledger.store.read() as s:
        assert s.query(AttributionRow).count() == 0


def test_stream_sends_the_record_as_a_last_chunk(client: TestClient, people) -> None:  # noqa: F811
    consumer = _key(people, people.consumer)
    with client.stream("POST", "/v1/chat/completions", json=_chat(stream=True), headers=consumer) as r:
        lines = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    last = json.loads(lines[-2])
    assert last["choices"] == [] and last["attribution"]["mode"] == "fast"
    assert client.get(f"/v1/attributions/{last['id']}", headers=consumer).status_code == 200


def test_reputation_is_public_and_flagged_rows_are_for_the_owner(client: TestClient, people) -> None:  # noqa: F811
    from tally.identity import create_api_key, resolve_account

    answered = client.post("/v1/chat/completions", json=_chat(attribution="fast"))
    assert answered.status_code == 200
    with people.ledger.store.read() as s:
        stored = [(r.row_hash, r.contributor, r.influence) for r in s.query(RowInfluence)]
    alice = [influence for _, who, influence in stored if who == people.alice.address]
    assert len(alice) == 4  # each of her four rows has an influence on the one answer
    rep = client.get(f"/v1/contributors/{people.alice.address}/reputation").json()
    assert rep["address"] == people.alice.address and rep["accepted"] == 4 and rep["rejected"] == 0
    assert rep["answers"] == 1 and rep["mean_influence"] == pytest.approx(sum(alice) / len(alice))
    # The question is one of alice's rows word for word, so her rows pull the answer hardest: influence is a z-score
    # over the adapter's rows, and hers stand above bob's.
    assert rep["sign"] == "positive"
    assert rep["flagged"] == []  # one answer is below the default min_answers of 5
    with people.tx() as s:
        _, owner = create_api_key(s, people.ledger, resolve_account(s, people.owner.address))
        _, bob = create_api_key(s, people.ledger, resolve_account(s, people.bob.address))
    path = "/v1/datanets/people/flagged-rows?min_answers=1"
    assert client.get(path).status_code == 401
    assert client.get(path, headers={"Authorization": f"Bearer {bob}"}).status_code == 403
    flagged = client.get(path, headers={"Authorization": f"Bearer {owner}"}).json()
    negative = sorted((influence, row) for row, _, influence in stored if influence < 0)
    assert negative, "the z-scores of the answer's influence over the rows average 0, so some are negative"
    assert flagged["datanet"] == "people"
    assert [(r["row_hash"], r["answers"]) for r in flagged["data"]] == [(row, 1) for _, row in negative]
    assert [r["mean_influence"] for r in flagged["data"]] == pytest.approx([v for v, _ in negative])
