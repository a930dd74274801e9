"""Accruals, epochs and statements against a real database and ledger."""

from __future__ import annotations

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from tests.rewards.conftest import ALICE, BOB, CAROL, DEV, make_record

from tally.ledger import Ledger, decode_entry
from tally.rewards import (
    DEFAULT_POLICY,
    DuplicateAccrualError,
    EpochClosed,
    NothingToPayError,
    RewardsAccrued,
    RewardsError,
    RewardsNotFoundError,
    accrue,
    balances,
    close_epoch,
    list_epochs,
    payout_proof,
    statement,
    verify_payout,
)
from tally.store import Base, Store
from tally.store.migrate import alembic_config, current_revision, head_revision, upgrade

P = DEFAULT_POLICY


def accrue_all(ledger: Ledger, *records) -> list:
    with ledger.store.transaction() as s:
        return [accrue(s, ledger, r, P) for r in records]


def test_the_rewards_tables_match_their_migration(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    ours = [d for d in diff if "rewards_" in repr(d)]
    assert ours == []
    command.downgrade(alembic_config(store), "0005_attribution")
    assert current_revision(store) == "0005_attribution"
    upgrade(store)
    assert current_revision(store) == head_revision()


def test_one_accrual_writes_one_ledger_event_lines_and_balances(ledger: Ledger) -> None:
    size = ledger.size()
    (acc,) = accrue_all(ledger, make_record())
    assert ledger.size() == size + 1 and acc.ledger_seq == size and acc.fee == 1000
    event = decode_entry(ledger.entry(acc.ledger_seq)).event()
    assert isinstance(event, RewardsAccrued) and event.inference == "chatcmpl-1" and event.fee == "1000"
    assert event.policy_hash == P.digest()
    assert {(x.account, x.role, x.amount) for x in event.lines} >= {(ALICE, "data", "450"), (DEV, "developer", "200")}
    assert sum(int(x.amount) for x in event.lines) == 1000
    with ledger.store.read() as s:
        assert {b.account: b.accrued for b in balances(s)} == acc.amounts()


def test_a_duplicate_accrual_is_refused_and_nothing_is_written(ledger: Ledger) -> None:
    accrue_all(ledger, make_record("chatcmpl-dup"))
    size = ledger.size()
    with pytest.raises(DuplicateAccrualError, match="chatcmpl-dup was already accrued"):
        accrue_all(ledger, make_record("chatcmpl-dup"))
    assert ledger.size() == size


def test_balances_equal_the_sum_of_accruals(ledger: Ledger) -> None:
    records = [
        make_record(
            f"chatcmpl-{i}", {ALICE: 0.5 + i / 20, BOB: 0.5 - i / 20}, prompt_tokens=17 * i, completion_tokens=3 + i
        )
        for i in range(10)
    ] + [make_record("chatcmpl-none", {}, developer=None), make_record("chatcmpl-carol", {CAROL: 1.0})]
    accruals = accrue_all(ledger, *records)
    expected: dict[str, int] = {}
    for a in accruals:
        for account, amount in a.amounts().items():
            expected[account] = expected.get(account, 0) + amount
    with ledger.store.read() as s:
        got = {b.account: b.accrued for b in balances(s)}
        assert got == expected and sum(got.values()) == sum(a.fee for a in accruals)
        for account in expected:
            assert statement(s, account).accrued == expected[account]


def test_an_epoch_pays_every_unpaid_amount_with_proofs_that_verify(ledger: Ledger) -> None:
    with ledger.store.transaction() as s, pytest.raises(NothingToPayError, match="nothing to pay"):
        close_epoch(s, ledger)
    accrue_all(ledger, make_record("a-1"), make_record("a-2", {BOB: 1.0}))
    with ledger.store.transaction() as s:
        epoch = close_epoch(s, ledger, actor="admin")
    with ledger.store.read() as s:
        owed = {b.account: b.accrued for b in balances(s)}
        assert epoch.number == 1 and epoch.total == 2000 and epoch.accounts == len(owed) and epoch.accruals == 2
        for account, amount in owed.items():
            p = payout_proof(s, account)
            assert (p.epoch, p.account, p.amount, p.root) == (1, account, amount, epoch.root)
            assert verify_payout(p.root, p.index, p.account, p.amount, p.proof)
            assert not verify_payout(p.root, p.index, p.account, p.amount + 1, p.proof)
        assert all(b.unpaid == 0 for b in balances(s))
    event = decode_entry(ledger.entry(epoch.ledger_seq)).event()
    assert isinstance(event, EpochClosed) and event.root == epoch.root and event.total == "2000"

    with ledger.store.transaction() as s, pytest.raises(NothingToPayError, match="since epoch 1"):
        close_epoch(s, ledger)
    accrue_all(ledger, make_record("a-3", {ALICE: 1.0}, developer=None))
    with ledger.store.transaction() as s:
        second = close_epoch(s, ledger)
    with ledger.store.read() as s:
        assert [e.number for e in list_epochs(s)] == [1, 2] and second.total == 1000
        assert payout_proof(s, ALICE).epoch == 2 and payout_proof(s, ALICE, 1).epoch == 1
        with pytest.raises(RewardsNotFoundError, match="no payout in epoch 2"):
            payout_proof(s, BOB, 2)
        with pytest.raises(RewardsNotFoundError, match="no epoch 7"):
            payout_proof(s, BOB, 7)


def test_a_statement_explains_each_answer(ledger: Ledger) -> None:
    accrue_all(ledger, make_record("s-1"), make_record("s-2", {BOB: 1.0}))
    with ledger.store.transaction() as s:
        close_epoch(s, ledger)
    accrue_all(ledger, make_record("s-3", {ALICE: 0.5, CAROL: 0.5}))
    with ledger.store.read() as s:
        st = statement(s, ALICE.lower())
        assert st.account == ALICE
        assert [(i.inference, i.role, i.share, i.amount, i.epoch) for i in st.items] == [
            ("s-1", "data", 0.75, 450, 1),
            ("s-3", "data", 0.5, 300, None),
        ]
        assert (st.accrued, st.paid, st.unpaid) == (750, 450, 300)
        assert st.as_json()["items"][1]["epoch"] == "unpaid"
        assert st.items[0].model == "med-qa-lora" and st.items[0].time == "2026-11-26T10:00:00.000000Z"
        assert statement(s, "0x" + "99" * 20).items == ()
        with pytest.raises(RewardsError, match="not an Ethereum address"):
            statement(s, "alice")
