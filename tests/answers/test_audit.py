"""The state audit on real flows: a clean database passes; each kind of tampering is caught and named with its
table, key and both values. The state is made through the packages' service functions; only the tampering writes
rows by hand."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pytest
from sqlalchemy import select, text
from tests.datanets.conftest import World, facts, world  # noqa: F401 - the fixture
from tests.rewards.conftest import ALICE, BOB, make_record

from tally.answers.audit import AuditError, AuditReport, audit, auditors
from tally.datanets import access, review, service, snapshots
from tally.datanets import contribute as contrib
from tally.datanets.tables import DataRow
from tally.identity import create_api_key, get_account, load_local_key, revoke_api_key, sign_contribution
from tally.ledger import Ledger
from tally.ledger.audit import run_audit
from tally.rewards import DEFAULT_POLICY, accrue, add_credit, close_epoch, compute_fee
from tally.rewards.credits import charge


@dataclass
class Built:
    world: World
    accepted: str  # a contribution accepted on review
    rejected_row: str  # a row rejected on review
    snapshot: str


def populate(world: World) -> Built:  # noqa: F811
    """Something of everything the audit checks: keys (one revoked), an owner-reviewed datanet with an accepted and
    a rejected contribution and a snapshot, a signed upload to an open datanet, a private invite-only datanet with
    a member and decided access requests, accruals paid by an epoch and some left unpaid, credits and a charge."""
    ledger = world.ledger
    with world.tx() as s:
        account = get_account(s, world.alice.address)
        assert account is not None
        key, _ = create_api_key(s, ledger, account)
        create_api_key(s, ledger, account, label="kept")
        revoke_api_key(s, ledger, key.key_id, by=world.alice)
    world.create("med-qa")
    kept = world.upload(world.alice, "med-qa", facts("a", 5))
    dropped = world.upload(world.bob, "med-qa", facts("b", 3))
    with world.tx() as s:
        review.review(s, ledger, world.owner, "med-qa", decision="accept", contribution=kept.id)
        review.review(
            s, ledger, world.owner, "med-qa", decision="reject", reason=" off topic ", contribution=dropped.id
        )
        snap = snapshots.create_snapshot(s, ledger, world.owner, "med-qa")
    with world.tx() as s:
        rejected_row = s.execute(select(DataRow.row_hash).where(DataRow.contribution == dropped.id)).scalars().first()
    assert rejected_row is not None

    dn = world.create("open-qa", policy="open")
    data = facts("c", 2)
    parsed = contrib.parse_for(dn.kind, data, "d.jsonl", None, contrib.upload_limits(dn, world.settings.datanets))
    root = contrib.content_root([r.row_hash for r in parsed.rows])
    signature = sign_contribution(
        load_local_key(world.keys, world.alice.address), nonce=7, datanet="open-qa", content_root=root,
        license=dn.license, chain_id=world.settings.chain_id,
    )  # fmt: skip
    world.upload(world.alice, "open-qa", data, "d.jsonl", signature=signature, nonce=7)

    world.create("secret", visibility="private", policy="invite-only", uses=["train", "rag"])
    with world.tx() as s:
        service.invite_member(s, ledger, world.owner, "secret", world.bob.address)
    hidden = world.upload(world.bob, "secret", facts("d", 2))
    with world.tx() as s:
        granted = access.request_access(s, ledger, world.dev, "secret", uses=["train"], purpose="fine-tune")
        denied = access.request_access(s, ledger, world.consumer, "secret", uses=["rag"], purpose=" search ")
        access.decide_access(s, ledger, world.owner, "secret", granted.id, grant=True, reason="ok")
        access.decide_access(s, ledger, world.owner, "secret", denied.id, grant=False, reason="no")
        access.request_access(s, ledger, world.consumer, "secret", uses=["train"], purpose="later")  # pending
        review.review(s, ledger, world.owner, "secret", decision="accept", contribution=hidden.id)
        snapshots.create_snapshot(s, ledger, world.owner, "secret")

    with world.tx() as s:
        for i in range(3):
            accrue(s, ledger, make_record(f"chatcmpl-{i}"), DEFAULT_POLICY)
        close_epoch(s, ledger)
        accrue(s, ledger, make_record("chatcmpl-3", {BOB: 1.0}), DEFAULT_POLICY)
        add_credit(s, ledger, world.consumer.address, 10_000, by=world.admin.address)
        record = make_record("chatcmpl-paid")
        fee = compute_fee(DEFAULT_POLICY, record.prompt_tokens, record.completion_tokens)
        paid = charge(s, ledger, record.id, world.consumer.address, fee, actor="rewards")
        accrue(s, ledger, record, DEFAULT_POLICY, fee=paid)
    return Built(world, kept.id, rejected_row, snap.id)


@pytest.fixture
def built(world: World) -> Built:  # noqa: F811
    return populate(world)


def run(ledger: Ledger) -> AuditReport:
    return audit(ledger.store, ledger)


def tamper(ledger: Ledger, *statements: str, **params: object) -> None:
    with ledger.store.transaction() as s:
        for statement in statements:
            s.execute(text(statement), params)


def caught(ledger: Ledger) -> AuditError:
    report = run(ledger)
    assert report.divergence is not None, report.as_json()
    with pytest.raises(AuditError) as info:
        report.raise_for_divergence()
    assert info.value.kind == "conflict"
    return info.value


def test_a_clean_database_passes(built: Built) -> None:
    report = run(built.world.ledger)
    assert report.clean, report.divergence and report.divergence.describe()
    assert report.size == built.world.ledger.size() and 0 < report.events < report.size
    tables = report.tables
    assert tables["accounts"] == 6 and tables["api_keys"] == 2 and tables["datanets"] == 3
    assert tables["contributions"] == 4 and tables["datanet_rows"] == 5 + 3 + 2 + 2
    assert tables["snapshots"] == 2 and tables["snapshot_rows"] == 5 + 2 and tables["signature_nonces"] == 1
    assert tables["access_requests"] == 3 and tables["datanet_members"] == 1
    assert tables["rewards_accruals"] == 5 and tables["rewards_epochs"] == 1 and tables["rewards_payouts"] > 0
    assert tables["rewards_balances"] > 0 and tables["rewards_credit_moves"] == 2
    assert tables["rewards_credit_accounts"] == 1
    report.raise_for_divergence()  # nothing to raise
    assert json.loads(json.dumps(report.as_json()))["clean"] is True


def test_an_inflated_balance_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    with ledger.store.read() as s:
        before = s.execute(text("SELECT accrued FROM rewards_balances WHERE account = :a"), {"a": ALICE}).scalar_one()
    tamper(ledger, "UPDATE rewards_balances SET accrued = :v WHERE account = :a", v=str(int(before) + 1), a=ALICE)
    error = caught(ledger)
    d = error.divergence
    assert (d.table, d.key, d.field, d.expected, d.found) == ("rewards_balances", ALICE, "accrued", before,
                                                              str(int(before) + 1))  # fmt: skip
    assert d.seq is not None
    assert f'rewards_balances {ALICE}: accrued is "{int(before) + 1}"' in error.message


def test_a_deleted_accrual_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(
        ledger,
        "DELETE FROM rewards_accrual_lines WHERE inference = 'chatcmpl-1'",
        "DELETE FROM rewards_accruals WHERE inference = 'chatcmpl-1'",
    )
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.found) == ("rewards_accruals", "chatcmpl-1", "row", "(no row)")
    with ledger.store.read() as s:
        entry = json.loads(ledger.entry(d.seq or 0, s))
    assert entry["type"] == "rewards.accrued" and entry["payload"]["inference"] == "chatcmpl-1"


def test_a_moved_accrual_line_is_caught(built: Built) -> None:
    """A line paid by no epoch, or moved to another account, shows up even with the balances fixed to match."""
    ledger = built.world.ledger
    tamper(ledger, "UPDATE rewards_accrual_lines SET epoch = NULL WHERE inference = 'chatcmpl-0'")
    d = caught(ledger).divergence
    assert (d.table, d.field, d.expected, d.found) == ("rewards_accrual_lines", "epoch", 1, None)
    assert d.key.startswith("chatcmpl-0 ")


def test_a_row_flipped_from_rejected_to_accepted_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE datanet_rows SET status = 'accepted' WHERE row_hash = :h", h=built.rejected_row)
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.expected, d.found) == (
        "datanet_rows", f"med-qa {built.rejected_row}", "status", "rejected", "accepted"
    )  # fmt: skip


def test_an_edited_review_reason_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE datanet_rows SET reason = 'duplicate' WHERE row_hash = :h", h=built.rejected_row)
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field) == ("datanet_rows", f"med-qa {built.rejected_row}", "reason_commitment")


def test_an_edited_snapshot_root_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    forged = "ab" * 32
    tamper(ledger, "UPDATE snapshots SET id = :f WHERE id = :r", f=forged, r=built.snapshot)
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.found) == ("snapshots", f"med-qa {built.snapshot}", "row", "(no row)")


def test_a_snapshot_holding_another_row_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(
        ledger,
        "UPDATE snapshot_rows SET row_hash = :h WHERE snapshot = :s AND row_hash = "
        "(SELECT MIN(row_hash) FROM snapshot_rows WHERE snapshot = :s)",
        h=built.rejected_row, s=built.snapshot,
    )  # fmt: skip
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.expected) == (
        "snapshot_rows", f"med-qa {built.snapshot}", "root (of its rows)", built.snapshot
    )  # fmt: skip


def test_edited_row_content_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    with ledger.store.read() as s:
        row_hash, content = s.execute(
            select(DataRow.row_hash, DataRow.content).where(DataRow.contribution == built.accepted).limit(1)
        ).one()
    forged = content.replace("born", "buried")
    tamper(ledger, "UPDATE datanet_rows SET content = :c WHERE row_hash = :h", c=forged, h=row_hash)
    d = caught(ledger).divergence
    assert (d.table, d.key, d.expected) == ("datanet_rows", f"med-qa {row_hash}", row_hash)
    assert d.found == hashlib.sha256(forged.encode()).hexdigest()


def test_a_granted_role_no_event_gave_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE accounts SET roles = 'admin,contributor' WHERE name = 'alice'")
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.expected, d.found) == (
        "accounts", built.world.alice.address, "roles", "contributor", "admin,contributor"
    )  # fmt: skip


def test_an_unrevoked_key_and_an_extra_datanet_are_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE api_keys SET revoked_at = NULL")
    d = caught(ledger).divergence
    assert (d.table, d.field, d.expected, d.found) == ("api_keys", "revoked", True, False)
    tamper(ledger, "UPDATE api_keys SET revoked_at = 'x' WHERE key_id = :k", k=d.key)
    assert run(ledger).clean
    columns = "description, tags, kind, license, uses, visibility, policy, max_upload_bytes, max_rows_per_day, owner"
    tamper(
        ledger,
        f"INSERT INTO datanets (slug, {columns}, created_at) SELECT 'forged', {columns}, created_at FROM datanets "
        "WHERE slug = 'med-qa'",
    )
    d = caught(ledger).divergence
    assert (d.table, d.key, d.expected, d.found) == ("datanets", "forged", "(no row)", "(a row)") and d.seq is None


def test_a_credit_balance_raised_by_hand_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE rewards_credit_accounts SET balance = '99999999'")
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.found) == (
        "rewards_credit_accounts", built.world.consumer.address, "balance", "99999999"
    )  # fmt: skip


def test_an_epoch_root_replaced_is_caught(built: Built) -> None:
    ledger = built.world.ledger
    tamper(ledger, "UPDATE rewards_epochs SET root = :r", r="0x" + "11" * 32)
    d = caught(ledger).divergence
    assert (d.table, d.key, d.field, d.found) == ("rewards_epochs", "epoch 1", "root", "0x" + "11" * 32)
    assert str(d.expected).startswith("0x") and d.expected != d.found


def test_small_batches_give_the_same_report(built: Built) -> None:
    ledger = built.world.ledger
    whole = run(ledger)
    with ledger.store.read() as s:
        small = run_audit(ledger, s, auditors(ledger), batch=3)
    assert small.clean and (small.size, small.events, small.tables) == (whole.size, whole.events, whole.tables)
