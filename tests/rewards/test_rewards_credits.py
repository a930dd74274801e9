"""Requesters pay for what they ask: credit, charge, accrual and payout add up, and an account that cannot pay is
refused before anything is generated."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from alembic import command
from eth_utils import to_checksum_address
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select
from tests.api.test_openai_routes import make_runtime
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 - fixture
from tests.rewards.conftest import ALICE, make_record
from typer.testing import CliRunner

from tally import answers
from tally.answers import AnswerRequest, RagOption, Sampling
from tally.api import create_app
from tally.attribution.service import Attributed
from tally.attribution.tables import AttributionRow
from tally.cli import rewards as rewards_cli
from tally.config import Settings
from tally.ledger import Ledger, decode_entry, verify_ledger
from tally.rewards import (
    DEFAULT_POLICY,
    InsufficientCreditError,
    RewardsCharged,
    RewardsCredited,
    RewardsError,
    add_credit,
    close_epoch,
    compute_fee,
    credit_of,
    max_cost,
    statement,
)
from tally.rewards.settle import settle_answer
from tally.rewards.tables import AccrualLineRow, AccrualRow, BalanceRow, CreditAccountRow
from tally.store import Store
from tally.store.migrate import alembic_config, current_revision, head_revision, upgrade

P = DEFAULT_POLICY
BUYER = to_checksum_address("0x" + "b7" * 20)


def credit(ledger: Ledger, account: str, amount: int) -> None:
    with ledger.store.transaction() as s:
        add_credit(s, ledger, account, amount, by="test-admin")


def settle(ledger: Ledger, inference: str, requester: str | None = BUYER, charge: bool = True, **kw: Any) -> int:
    record = make_record(inference, **kw).model_copy(update={"requested_by": requester})
    return settle_answer(ledger, Attributed(record, []), P, actor=requester or "engine", charge_requester=charge)


def events(ledger: Ledger, kind: type) -> list[Any]:
    found = [decode_entry(ledger.entry(i)).event() for i in range(ledger.size())]
    return [e for e in found if isinstance(e, kind)]


def accrued_lines(ledger: Ledger, inference: str) -> int:
    with ledger.store.read() as s:
        rows = s.execute(select(AccrualLineRow.amount).where(AccrualLineRow.inference == inference)).scalars()
        return sum(int(a) for a in rows)


def test_a_charge_pays_exactly_the_accrued_fee_and_never_overdraws(ledger: Ledger) -> None:
    fee = compute_fee(P, 300, 200)
    assert fee == 1000
    credit(ledger, BUYER, 2500)
    (credited,) = events(ledger, RewardsCredited)
    assert (credited.account, credited.amount, credited.by, credited.balance) == (BUYER, "2500", "test-admin", "2500")

    for i in range(3):
        settle(ledger, f"paid-{i}")
    charges = events(ledger, RewardsCharged)
    # the third answer finds 500 left: it is charged what is there, and only that is split
    assert [(c.inference, c.amount, c.fee, c.balance) for c in charges] == [
        ("paid-0", "1000", "1000", "1500"), ("paid-1", "1000", "1000", "500"), ("paid-2", "500", "1000", "0"),
    ]  # fmt: skip
    with ledger.store.read() as s:
        for c in charges:
            assert int(s.get(AccrualRow, c.inference).fee) == int(c.amount) == accrued_lines(ledger, c.inference)
        account = credit_of(s, BUYER)
    assert (account.balance, account.credited, account.charged) == (0, 2500, 2500)
    assert [(m.kind, m.amount, m.balance) for m in account.moves] == [
        ("credit", 2500, 2500), ("charge", 1000, 1500), ("charge", 1000, 500), ("charge", 500, 0),
    ]  # fmt: skip

    settle(ledger, "dry")  # an empty balance pays nothing, so nothing is accrued for anyone
    with ledger.store.read() as s:
        assert s.get(AccrualRow, "dry").fee == "0" and accrued_lines(ledger, "dry") == 0
        assert credit_of(s, BUYER).balance == 0

    # the epoch pays out exactly what requesters were charged: no money from nowhere
    with ledger.store.transaction() as s:
        epoch = close_epoch(s, ledger, actor="test")
    assert epoch.total == 2500
    assert verify_ledger(ledger).size == ledger.size()


def test_anonymous_answers_are_charged_and_accrue_nothing(ledger: Ledger) -> None:
    credit(ledger, BUYER, 5000)
    size = ledger.size()
    settle(ledger, "anon", requester=None)
    assert ledger.size() == size + 1  # the attribution record's entry alone
    assert events(ledger, RewardsCharged) == []
    with ledger.store.read() as s:
        assert s.get(AccrualRow, "anon") is None and s.execute(select(BalanceRow)).first() is None
        assert credit_of(s, BUYER).balance == 5000


def test_a_requester_never_credited_is_not_charged(ledger: Ledger) -> None:
    """With charging off nothing asks for credit first: the policy's fee accrues, as it always did."""
    settle(ledger, "trial", requester=ALICE, charge=False)
    assert events(ledger, RewardsCharged) == []
    with ledger.store.read() as s:
        assert s.get(AccrualRow, "trial").fee == "1000" and s.get(CreditAccountRow, ALICE) is None


def test_a_credit_must_be_positive_and_name_an_address(ledger: Ledger) -> None:
    for account, amount in ((BUYER, 0), (BUYER, -5), ("nobody", 10), (BUYER, 2**256)):
        with pytest.raises(RewardsError):
            credit(ledger, account, amount)
    assert events(ledger, RewardsCredited) == []


def test_the_statement_shows_credits_and_charges(ledger: Ledger) -> None:
    credit(ledger, BUYER, 1500)
    settle(ledger, "st-1")
    with ledger.store.read() as s:
        mine = statement(s, BUYER.lower()).as_json()
        public = statement(s, BUYER, with_credit=False).as_json()
        stranger = statement(s, ALICE).as_json()
    assert mine["credit"]["balance"] == "500" and [m["kind"] for m in mine["credit"]["moves"]] == ["credit", "charge"]
    assert mine["credit"]["moves"][1]["inference"] == "st-1"
    assert public["credit"] is None and stranger["credit"] is None


def test_the_credit_tables_migrate_down_and_up(store: Store) -> None:
    command.downgrade(alembic_config(store), "0007_ledger_bundles")
    tables = set(inspect(store.engine).get_table_names())
    assert not tables & {"rewards_credit_accounts", "rewards_credit_moves"}
    upgrade(store)
    assert current_revision(store) == head_revision()
    assert {"rewards_credit_accounts", "rewards_credit_moves"} <= set(inspect(store.engine).get_table_names())


# --- the answer path with `rewards.charge_requesters` on ---


@pytest.fixture
def charging(tiny: TinySetup, settings: Settings) -> Iterator[answers.Runtime]:  # noqa: F811
    from tally.attribution import Attributor
    from tally.identity import create_account

    on = settings.model_copy(update={"rewards": settings.rewards.model_copy(update={"charge_requesters": True})})
    runtime = make_runtime(make_engine(tiny), on).start()
    runtime.attributor = Attributor(on, runtime.store, tiny.model_dir, "tiny-base")
    with runtime.store.transaction() as s:
        create_account(s, runtime.ledger, "buyer", ["consumer"])
    yield runtime
    runtime.close()


def _buyer(runtime: answers.Runtime) -> Any:
    from tally.identity import Principal, resolve_account

    with runtime.store.read() as s:
        return Principal.of(resolve_account(s, "buyer"))


def test_an_answer_the_credit_cannot_cover_is_refused_before_generation(
    charging: answers.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    buyer = _buyer(charging)
    generated: list[object] = []
    engine = charging.engine
    assert engine is not None
    real = engine.stream_sync
    monkeypatch.setattr(engine, "stream_sync", lambda *a, **k: generated.append(a) or real(*a, **k))
    request = AnswerRequest(
        model="tiny-base", prompt="hello there", sampling=Sampling(max_tokens=4, temperature=0), requester=buyer,
        attribution="fast",
    )  # fmt: skip
    prompt_tokens = len(engine.encode("hello there"))
    needed = max_cost(P, prompt_tokens, 4)
    credit(charging.ledger, buyer.address, needed - 1)
    size = charging.ledger.size()
    with pytest.raises(InsufficientCreditError) as caught:
        answers.answer(charging, request)
    err = caught.value
    assert err.kind == "limit" and err.values == {"balance": needed - 1, "needed": needed, "window": "credit"}
    assert "tally rewards credit" in err.message
    # a RAG request from an account never credited is refused before retrieval writes its ledger entry
    from tally.identity import Principal

    dry = AnswerRequest(
        model="tiny-base", messages=[{"role": "user", "content": "hi"}], rag=RagOption(datanets=["nope"]),
        sampling=Sampling(max_tokens=4), requester=Principal(BUYER, "dry", frozenset({"consumer"})),
    )  # fmt: skip
    with pytest.raises(InsufficientCreditError) as caught:
        answers.prepare(charging, dry)
    assert caught.value.values["balance"] == 0
    assert charging.ledger.size() == size and generated == []
    with charging.store.read() as s:
        assert s.execute(select(AttributionRow)).first() is None

    # HTTP: a 429 that says how to add credit, and the engine never ran
    from tally.identity import create_api_key, resolve_account

    with charging.store.transaction() as s:
        _, token = create_api_key(s, charging.ledger, resolve_account(s, "buyer"))
    with TestClient(create_app(runtime=charging)) as client:
        r = client.post(
            "/v1/completions", json={"model": "tiny-base", "prompt": "hello there", "max_tokens": 4},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
    assert r.status_code == 429 and "add credit" in r.json()["error"]["message"]
    assert generated == []


def test_credit_then_answer_lowers_the_balance_by_the_accrued_fee(charging: answers.Runtime) -> None:
    buyer = _buyer(charging)
    credit(charging.ledger, buyer.address, 10_000)
    request = AnswerRequest(
        model="tiny-base", prompt="hello there", sampling=Sampling(max_tokens=4, temperature=0), requester=buyer,
        attribution="fast",
    )  # fmt: skip
    result = answers.answer(charging, request)
    assert result.record is not None
    with charging.store.read() as s:
        fee = int(s.get(AccrualRow, result.id).fee)
        left = credit_of(s, buyer.address)
    assert fee == compute_fee(P, result.prompt_tokens, result.completion_tokens) > 0
    assert left.balance == 10_000 - fee and left.charged == fee == accrued_lines(charging.ledger, result.id)
    assert fee <= max_cost(P, result.prompt_tokens, 4)
    assert verify_ledger(charging.ledger).size == charging.ledger.size()

    # anonymous: answered, recorded, charged and accrued nothing
    anon = answers.answer(charging, AnswerRequest(model="tiny-base", prompt="hi", sampling=Sampling(max_tokens=2)))
    with charging.store.read() as s:
        assert s.get(AccrualRow, anon.id) is None and credit_of(s, buyer.address).balance == 10_000 - fee


def test_answers_in_progress_hold_their_credit(charging: answers.Runtime) -> None:
    """Credit for one answer admits one: a second answer asked while the first is being generated is refused, and
    the hold is released once the first is settled (or fails)."""
    buyer = _buyer(charging)
    engine = charging.engine
    assert engine is not None
    request = AnswerRequest(
        model="tiny-base", prompt="hello there", sampling=Sampling(max_tokens=4, temperature=0), requester=buyer,
        attribution="fast",
    )  # fmt: skip
    needed = max_cost(P, len(engine.encode("hello there")), 4)
    credit(charging.ledger, buyer.address, needed + needed // 2)  # enough for one, not two
    first = answers.prepare(charging, request)
    assert first.credit_hold is not None
    with pytest.raises(InsufficientCreditError) as second:
        answers.prepare(charging, request)
    assert second.value.values["balance"] == needed // 2  # what is left once the first answer's hold is counted
    answers.finish(charging, first, answers.generate(charging, first))
    charging.credit_holds.release(first.credit_hold)
    assert charging.credit_holds.admit(buyer.address, 0, 0)[1] == 0  # nothing held any more


def test_a_batch_refused_at_its_kth_prompt_answers_and_charges_none(charging: answers.Runtime) -> None:
    from tally.identity import create_api_key, resolve_account

    buyer = _buyer(charging)
    credit(charging.ledger, buyer.address, 1_000_000)
    with charging.store.transaction() as s:
        _, token = create_api_key(s, charging.ledger, resolve_account(s, "buyer"))
    size = charging.ledger.size()
    with TestClient(create_app(runtime=charging)) as client:
        r = client.post(
            "/v1/completions", json={"model": "tiny-base", "prompt": ["hello there", "word " * 300], "max_tokens": 4},
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"  # the second prompt is too long
    assert charging.ledger.size() == size  # the first prompt was neither answered nor charged
    with charging.store.read() as s:
        assert credit_of(s, buyer.address).charged == 0
    assert charging.credit_holds.admit(buyer.address, 0, 0)[1] == 0  # the first prompt's hold was given back


async def _read_two_deltas(runtime: answers.Runtime, prepared: answers.Prepared) -> str:
    text = ""
    events = answers.stream(runtime, prepared)
    async for event in events:
        assert isinstance(event, answers.Delta)
        text += event.text
        if len(text) > 1:
            break
    await events.aclose()  # the client left
    return text


def test_a_paid_stream_left_early_is_charged_for_what_was_received(charging: answers.Runtime) -> None:
    import asyncio
    import time

    buyer = _buyer(charging)
    credit(charging.ledger, buyer.address, 1_000_000)
    request = AnswerRequest(
        model="tiny-base", prompt="hello there", sampling=Sampling(max_tokens=40, temperature=0), requester=buyer,
        attribution="fast", stream=True,
    )  # fmt: skip
    prepared = answers.prepare(charging, request)
    asyncio.run(_read_two_deltas(charging, prepared))
    deadline = time.monotonic() + 30
    fee = None
    while fee is None and time.monotonic() < deadline:  # settled on a worker thread once the stream is torn down
        with charging.store.read() as s:
            row = s.get(AccrualRow, prepared.id)
            fee = None if row is None else int(row.fee)
        time.sleep(0.05)
    assert fee is not None and 0 < fee < max_cost(P, len(prepared.prompt_ids), 40)
    with charging.store.read() as s:
        assert credit_of(s, buyer.address).charged == fee
    assert charging.credit_holds.admit(buyer.address, 0, 0)[1] == 0  # the hold is released


# --- the doors ---


def test_cli_credit_and_credits(ledger: Ledger, settings: Settings) -> None:
    runner = CliRunner()
    out = runner.invoke(rewards_cli.app, ["credit", BUYER, "700"])
    assert out.exit_code == 0 and "balance 700" in out.output
    out = runner.invoke(rewards_cli.app, ["credit", BUYER, "0"])
    assert out.exit_code == 1 and "positive" in out.output
    out = runner.invoke(rewards_cli.app, ["credits", BUYER, "--json"])
    assert out.exit_code == 0 and json.loads(out.output)["balance"] == "700"
    out = runner.invoke(rewards_cli.app, ["statement", BUYER])
    assert out.exit_code == 0 and "balance 700" in out.output


def test_api_credit_is_for_admins_and_reading_it_for_the_account(ledger: Ledger, settings: Settings) -> None:
    from tally.identity import create_account, create_api_key

    headers, addresses = {}, {}
    with ledger.store.transaction() as s:
        for name, roles in (("root", ["admin"]), ("buyer", ["consumer"]), ("other", ["consumer"])):
            account, _ = create_account(s, ledger, name, roles)
            _, token = create_api_key(s, ledger, account)
            headers[name], addresses[name] = {"Authorization": f"Bearer {token}"}, account.address
    buyer = addresses["buyer"]
    with TestClient(create_app(settings)) as c:
        body = {"account": buyer.lower(), "amount": "1200"}
        assert c.post("/v1/rewards/credits", json=body).status_code == 401
        assert c.post("/v1/rewards/credits", json=body, headers=headers["buyer"]).status_code == 403
        r = c.post("/v1/rewards/credits", json=body, headers=headers["root"])
        assert r.status_code == 200, r.text
        assert r.json()["account"] == buyer and r.json()["balance"] == "1200" and r.json()["by"] == addresses["root"]
        bad = c.post("/v1/rewards/credits", json={"account": buyer, "amount": -1}, headers=headers["root"])
        assert bad.status_code == 400
        assert c.get(f"/v1/rewards/credits/{buyer}").status_code == 401
        assert c.get(f"/v1/rewards/credits/{buyer}", headers=headers["other"]).status_code == 403
        for who in ("buyer", "root"):
            got = c.get(f"/v1/rewards/credits/{buyer.lower()}", headers=headers[who])
            assert got.status_code == 200 and got.json()["balance"] == "1200"
        assert c.get(f"/v1/rewards/statement/{buyer}").json()["credit"] is None
        own = c.get(f"/v1/rewards/statement/{buyer}", headers=headers["buyer"]).json()
        assert own["credit"]["credited"] == "1200"
