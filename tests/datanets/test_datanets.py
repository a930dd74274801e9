"""Datanets end to end through the service functions: contributions, review, snapshots, access, the ledger."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.datanets.conftest import World, alpaca, facts

from tally.datanets import access, review, service, snapshots
from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.datanets.tables import DataRow
from tally.identity import load_local_key, sign_contribution
from tally.ledger import decode_entry, verify_ledger


def ledger_types(world: World) -> list[str]:
    return [decode_entry(b).type for b in world.ledger.entries(0, 10_000)]


def row_count(world: World, slug: str) -> int:
    with world.ledger.store.read() as s:
        return s.execute(select(func.count()).select_from(DataRow).where(DataRow.datanet == slug)).scalar_one()


def test_create_validates_and_records(world: World) -> None:
    dn = world.create(license="mit or apache-2.0", tags=["med", "qa"])
    assert dn.license == "MIT OR Apache-2.0" and dn.owner == world.owner.address
    assert ledger_types(world)[-1] == "datanet.created"
    for kw, message in [
        ({"license": "MIT-ish"}, "not a valid SPDX expression"),
        ({"kind": "images"}, "kind 'images' is not one of"),
        ({"uses": ["resell"]}, "use 'resell' is not one of"),
        ({"visibility": "secret"}, "visibility"),
    ]:
        with pytest.raises(DatanetError, match=message):
            world.create("other", **kw)
    with pytest.raises(DatanetError, match="slug"):
        world.create("Bad Name")
    with pytest.raises(DatanetError, match="already exists"):
        world.create()
    with pytest.raises(ForbiddenError, match="owner role"), world.tx() as s:
        service.create_datanet(s, world.ledger, world.alice, "x", kind="chat", license="MIT", uses=["train"],
                               max_upload_bytes=10, max_rows_per_day=10)  # fmt: skip


def test_owner_reviewed_contribution_waits_then_review_and_snapshot(world: World) -> None:
    world.create()
    result = world.upload(world.alice, "med-qa", facts("a", 5))
    assert result.status == "pending" and result.row_count == 5 and len(result.content_root) == 64
    with world.tx() as s:
        snap0 = snapshots.create_snapshot(s, world.ledger, world.owner, "med-qa")
    assert snap0.row_count == 0
    with world.tx() as s:
        assert (
            review.review(s, world.ledger, world.owner, "med-qa", decision="accept", contribution=result.id[:10]) == 5
        )
    bob = world.upload(world.bob, "med-qa", facts("b", 3))
    with world.tx() as s:
        rows = [r["row_hash"] for r in service.list_rows(s, world.owner, "med-qa", status="pending")]
        review.review(s, world.ledger, world.owner, "med-qa", decision="accept", rows=rows[:2])
        review.review(s, world.ledger, world.owner, "med-qa", decision="reject", rows=rows[2:], reason="off topic")
        snap = snapshots.create_snapshot(s, world.ledger, world.owner, "med-qa")
    assert snap.row_count == 7 and snap.contributors == {world.alice.address: 5, world.bob.address: 2}
    with world.tx() as s:
        d = snapshots.diff_snapshots(s, world.owner, "med-qa", "v1", "latest")
        assert len(d["added"]) == 7 and d["removed"] == []
        again = snapshots.create_snapshot(s, world.ledger, world.owner, "med-qa")
    assert again == snap  # nothing changed: the same snapshot, no new entry
    rejected = [r for r in service_rows(world, world.bob) if r["status"] == "rejected"]
    assert rejected and rejected[0]["reason"] == "off topic" and bob.id
    # the reason is kept in the database for those who may read the rows; the public ledger holds a commitment
    entries = [json.loads(e) for e in world.ledger.entries(0, world.ledger.size())]
    reviews = [e for e in entries if e["type"] == "datanet.rows_reviewed"]
    assert reviews and "off topic" not in json.dumps(reviews)
    assert all(e["payload"]["reason_commitment"].startswith("hmac-sha256:") for e in reviews)
    with pytest.raises(DatanetError, match="needs a reason"), world.tx() as s:
        review.review(s, world.ledger, world.owner, "med-qa", decision="reject", contribution=bob.id)


def service_rows(world: World, who) -> list[dict]:
    with world.ledger.store.read() as s:
        return service.list_rows(s, who, "med-qa", limit=1000)


def test_open_datanets_accept_at_once_and_exact_duplicates_are_refused(world: World) -> None:
    world.create(policy="open")
    first = world.upload(world.alice, "med-qa", facts("a", 4))
    assert first.status == "accepted"
    before = (row_count(world, "med-qa"), world.ledger.size())
    dup = facts("z", 2) + facts("a", 4).splitlines(keepends=True)[2]
    with pytest.raises(DatanetError, match=r"data.jsonl line 3: this row is already in datanet 'med-qa'"):
        world.upload(world.bob, "med-qa", dup)
    assert (row_count(world, "med-qa"), world.ledger.size()) == before


def test_near_duplicates_are_flagged_with_the_row_they_resemble(world: World) -> None:
    world.create(policy="open")
    text = (
        "Marie Curie was born in Warsaw in 1867 and later moved to Paris to study physics and chemistry at the "
        "Sorbonne, where she met Pierre Curie; together they discovered polonium and radium, and she became the "
        "first person to win Nobel Prizes in two different sciences"
    )
    world.upload(world.alice, "med-qa", alpaca([("Tell me about Marie Curie.", text)]))
    edited = alpaca([("Tell me about Marie Curie.", text.replace("sciences", "fields of science"))])
    result = world.upload(world.bob, "med-qa", edited)
    assert len(result.near_duplicates) == 1
    original = service_rows(world, world.owner)[0]["row_hash"]
    assert result.near_duplicates[0]["resembles"] == original


def test_a_held_near_duplicate_finder_keeps_nothing_per_row_and_forgets_rolled_back_rows(world: World) -> None:
    from tally.datanets import contribute as contrib
    from tally.datanets.formats import row_hash

    world.create(policy="open")
    near = contrib.NearDups()  # what the runtime holds across uploads
    curie = (
        "Marie Curie was born in Warsaw in 1867 and later moved to Paris to study physics and chemistry at the "
        "Sorbonne, where she met Pierre Curie; together they discovered polonium and radium"
    )
    volta = (
        "Alessandro Volta was born in Como in 1745 and invented the voltaic pile, the first electric battery to give "
        "a steady current, after a long dispute with Luigi Galvani about animal electricity in frogs"
    )
    world.upload(world.alice, "med-qa", alpaca([("Tell me about Marie Curie.", curie)]), near_dups=near)
    held = (dict(near._hashers), dict(near._layouts), set(near._keyed))

    with pytest.raises(RuntimeError), world.tx() as s:  # an upload whose transaction rolls back
        contrib.contribute(
            s, world.ledger, world.alice, "med-qa", alpaca([("Tell me about Volta.", volta)]), "v.jsonl",
            settings=world.settings.datanets, chain_id=world.settings.chain_id, near_dups=near,
        )  # fmt: skip
        raise RuntimeError("rolled back")

    # an upload that fails inside `contribute`, after its rows were keyed
    original_append = world.ledger.append

    def failing_append(*args: object, **kwargs: object) -> object:
        raise RuntimeError("the ledger append failed")

    world.ledger.append = failing_append  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError, match="append failed"), world.tx() as s:
            contrib.contribute(
                s, world.ledger, world.alice, "med-qa", alpaca([("Volta again?", volta + " again")]), "w.jsonl",
                settings=world.settings.datanets, chain_id=world.settings.chain_id, near_dups=near,
            )  # fmt: skip
    finally:
        world.ledger.append = original_append  # type: ignore[method-assign]

    edited = alpaca([("Tell me about Volta.", volta.replace("in frogs", "in the legs of frogs"))])
    result = world.upload(world.bob, "med-qa", edited, near_dups=near)
    assert result.near_duplicates == []  # the rolled back rows are not candidates
    edited = alpaca([("Tell me about Marie Curie.", curie.replace("radium", "radium together"))])
    result = world.upload(world.bob, "med-qa", edited, near_dups=near)
    original = row_hash({"instruction": "Tell me about Marie Curie.", "input": "", "output": curie})
    assert [d["resembles"] for d in result.near_duplicates] == [original]
    assert (dict(near._hashers), dict(near._layouts), set(near._keyed)) == held  # nothing grew with the rows


def test_permission_matrix(world: World) -> None:
    world.create("private-set", visibility="private", uses=["train", "rag"])
    world.create("invited", policy="invite-only")
    with world.tx() as s:
        with pytest.raises(ForbiddenError, match="only the owner"):
            review.review(s, world.ledger, world.alice, "invited", decision="accept", contribution="x")
        with pytest.raises(NotFoundError):
            service.get_datanet(s, world.consumer, "private-set")
        assert [d.slug for d in service.list_datanets(s, world.consumer)] == ["invited"]
        with pytest.raises(ForbiddenError, match="private"):
            service.check_use(s, world.dev, "private-set", "train")
        with pytest.raises(ForbiddenError, match="does not permit use 'commercial'"):
            service.check_use(s, world.owner, "private-set", "commercial")
    with pytest.raises(ForbiddenError, match="contributor role"):
        world.upload(world.consumer, "invited", facts("c", 1))
    with pytest.raises(ForbiddenError, match="invite-only"):
        world.upload(world.alice, "invited", facts("c", 1))
    with world.tx() as s:
        service.invite_member(s, world.ledger, world.owner, "invited", world.alice.address)
    assert world.upload(world.alice, "invited", facts("c", 1)).row_count == 1


def test_access_requests_gate_private_data(world: World, tmp_path: Path) -> None:
    world.create("private-set", visibility="private", uses=["train", "rag", "export"], policy="open")
    world.upload(world.owner, "private-set", facts("p", 3))
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, "private-set")
        with pytest.raises(DatanetError, match="does not permit 'commercial'"):
            access.request_access(s, world.ledger, world.dev, "private-set", uses=["commercial"], purpose="resale")
        req = access.request_access(s, world.ledger, world.dev, "private-set", uses=["train"], purpose="fine-tune")
        with pytest.raises(DatanetError, match="already have a pending access request") as again:
            access.request_access(s, world.ledger, world.dev, "private-set", uses=["rag"], purpose="again")
        assert again.value.kind == "conflict"
        denied = access.request_access(s, world.ledger, world.consumer, "private-set", uses=["rag"], purpose="search")
    with pytest.raises(NotFoundError), world.tx() as s:
        snapshots.export_snapshot(s, world.dev, "private-set", "latest", tmp_path / "x")
    with world.tx() as s:
        with pytest.raises(NotFoundError):  # a private datanet stays hidden from those who cannot read it
            access.decide_access(s, world.ledger, world.dev, "private-set", req.id, grant=True, reason="")
        access.decide_access(s, world.ledger, world.owner, "private-set", req.id, grant=True, reason="ok")
        access.decide_access(s, world.ledger, world.owner, "private-set", denied.id, grant=False, reason="no")
    with world.tx() as s:
        assert service.check_use(s, world.dev, "private-set", "train").slug == "private-set"
        with pytest.raises(ForbiddenError, match="no grant for 'rag'"):
            service.check_use(s, world.dev, "private-set", "rag")
        with pytest.raises(NotFoundError):
            service.get_datanet(s, world.consumer, "private-set")
        with pytest.raises(ForbiddenError, match="does not cover 'export'"):  # a train grant is not a copy
            snapshots.export_snapshot(s, world.dev, "private-set", "latest", tmp_path / "export")
        copy = access.request_access(s, world.ledger, world.dev, "private-set", uses=["export"], purpose="archive")
        access.decide_access(s, world.ledger, world.owner, "private-set", copy.id, grant=True, reason="ok")
    with world.tx() as s:
        out = snapshots.export_snapshot(s, world.dev, "private-set", "latest", tmp_path / "export")
    assert len((out / "data.jsonl").read_text().splitlines()) == 3
    types = ledger_types(world)
    assert {"datanet.access_requested", "datanet.access_granted", "datanet.access_denied"} <= set(types)


def test_signed_contributions_forged_and_replayed_signatures_are_refused(world: World) -> None:
    world.create(policy="open")
    data = facts("s", 3)
    from tally.datanets import contribute as contrib

    with world.ledger.store.read() as s:
        dn = service.get_datanet(s, world.alice, "med-qa")
    parsed = contrib.parse_for(dn.kind, data, "d.jsonl", None, contrib.upload_limits(dn, world.settings.datanets))
    root = contrib.content_root([r.row_hash for r in parsed.rows])
    fields = {"datanet": "med-qa", "content_root": root, "license": dn.license, "chain_id": world.settings.chain_id}
    alice_key = load_local_key(world.keys, world.alice.address)
    bob_key = load_local_key(world.keys, world.bob.address)

    forged = sign_contribution(bob_key, nonce=1, **fields)
    with pytest.raises(DatanetError, match="signature was made by"):
        world.upload(world.alice, "med-qa", data, "d.jsonl", signature=forged, nonce=1)
    wrong_content = sign_contribution(alice_key, nonce=1, **{**fields, "content_root": "00" * 32})
    with pytest.raises(DatanetError, match="not by the contributor"):
        world.upload(world.alice, "med-qa", data, "d.jsonl", signature=wrong_content, nonce=1)
    good = sign_contribution(alice_key, nonce=1, **fields)
    result = world.upload(world.alice, "med-qa", data, "d.jsonl", signature=good, nonce=1)
    assert result.signed
    other = facts("t", 2)
    parsed2 = contrib.parse_for(dn.kind, other, "e.jsonl", None, contrib.upload_limits(dn, world.settings.datanets))
    root2 = contrib.content_root([r.row_hash for r in parsed2.rows])
    replay = sign_contribution(alice_key, nonce=1, **{**fields, "content_root": root2})
    with pytest.raises(DatanetError, match="already used"):
        world.upload(world.alice, "med-qa", other, "e.jsonl", signature=replay, nonce=1)


def test_snapshot_roots_do_not_depend_on_upload_order_or_reimport(world: World) -> None:
    lines = facts("o", 12).splitlines(keepends=True)
    roots = []
    for slug, seed in [("order-a", 1), ("order-b", 2), ("order-c", 3)]:
        world.create(slug, policy="open")
        shuffled = lines[:]
        random.Random(seed).shuffle(shuffled)
        for start in range(0, 12, 4):  # three uploads, different splits per datanet
            world.upload(world.alice if start % 8 == 0 else world.bob, slug, b"".join(shuffled[start : start + 4]))
        with world.tx() as s:
            roots.append(snapshots.create_snapshot(s, world.ledger, world.owner, slug).id)
    assert len(set(roots)) == 1
    with world.ledger.store.read() as s:
        hashes = [r["row_hash"] for r in service.list_rows(s, world.owner, "order-a", limit=100)]
    assert roots[0] == snapshots.snapshot_root(hashes)


def test_daily_row_limit(world: World) -> None:
    world.create(policy="open", max_rows_per_day=5)
    world.upload(world.alice, "med-qa", facts("d", 4))
    with pytest.raises(DatanetError, match="allows 5 rows per contributor per day"):
        world.upload(world.alice, "med-qa", facts("e", 2))
    assert world.upload(world.bob, "med-qa", facts("e", 2)).row_count == 2


def test_export_loads_with_huggingface_datasets(world: World, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    world.create(policy="open", tags=["medicine"])
    world.upload(world.alice, "med-qa", facts("h", 6))
    with world.tx() as s:
        snap = snapshots.create_snapshot(s, world.ledger, world.owner, "med-qa")
        out = snapshots.export_snapshot(s, world.owner, "med-qa", "latest", tmp_path / "hf")
    card = (out / "README.md").read_text()
    assert "license: cc-by-4.0" in card and snap.id in card and world.alice.address in card
    ds = datasets.load_dataset(str(out), split="train")
    assert ds.num_rows == 6 and set(ds.column_names) == {"instruction", "input", "output"}


def test_a_long_mixed_scenario_leaves_a_ledger_that_verifies(world: World) -> None:
    rng = random.Random(5)
    world.create("mix-a", policy="open")
    world.create("mix-b")
    for i in range(25):
        who = rng.choice([world.alice, world.bob, world.owner])
        slug = rng.choice(["mix-a", "mix-b"])
        try:
            result = world.upload(who, slug, facts(f"m{i}", rng.randint(1, 6)))
        except DatanetError:
            continue
        if slug == "mix-b" and rng.random() < 0.7:
            with world.tx() as s:
                decision = rng.choice(["accept", "reject"])
                review.review(s, world.ledger, world.owner, slug, decision=decision, contribution=result.id, reason="x")
        if i % 5 == 4:
            with world.tx() as s:
                snapshots.create_snapshot(s, world.ledger, world.owner, slug)
        if i % 7 == 0:
            world.ledger.checkpoint()
    world.ledger.checkpoint()
    report = verify_ledger(world.ledger)
    assert report.size == world.ledger.size() > 40
    payloads = [json.loads(b) for b in world.ledger.entries(0, 10_000)]
    assert any(p["type"] == "datanet.rows_reviewed" for p in payloads)


def _bad_uploads() -> list[tuple[str, str, bytes, str]]:
    good = [json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(40)]
    line37 = [*good[:36], '{"instruction": "q36", "output": }', *good[37:]]
    chat = json.dumps({"conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "beep"}]})
    return [
        ("instruction", "invalid.jsonl", "\n".join(line37).encode(), "invalid.jsonl line 37: invalid JSON"),
        ("instruction", "missing.jsonl", b'{"instruction": "q"}\n', "missing.jsonl line 1, field 'output': missing"),
        ("chat", "chat.jsonl", chat.encode(),
         "chat.jsonl line 1, field 'conversations[1].from': unknown role tag 'robot'"),
        ("instruction", "empty.jsonl", b"", "empty.jsonl: the file is empty; expected at least one row"),
        ("instruction", "big.jsonl", b"x" * 8192, "big.jsonl: 8.0 KB is over the upload limit of 4.0 KB"),
        ("instruction", "latin1.jsonl", '{"instruction": "caf\u00e9", "output": "x"}'.encode("latin-1"),
         "latin1.jsonl line 1: not UTF-8"),
    ]  # fmt: skip


@pytest.mark.parametrize(("kind", "filename", "data", "message"), _bad_uploads(), ids=lambda v: str(v)[:14])
def test_a_refused_upload_names_the_problem_and_writes_nothing(
    world: World, kind: str, filename: str, data: bytes, message: str
) -> None:
    world.create("target", kind=kind, max_upload_bytes=4096)
    world.upload(world.owner, "target", facts("seed", 1) if kind == "instruction" else _chat_row())
    before = (row_count(world, "target"), world.ledger.size())
    with pytest.raises(DatanetError) as refused:
        world.upload(world.alice, "target", data, filename)
    assert str(refused.value).startswith(message), str(refused.value)
    assert (row_count(world, "target"), world.ledger.size()) == before


def _chat_row() -> bytes:
    return json.dumps(
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    ).encode()


def test_rows_rejected_after_a_snapshot_are_never_exported_or_trained_on(world: World, tmp_path: Path) -> None:
    from tally.factory.config import SourceCfg
    from tally.factory.data import load_examples

    world.create("later", policy="open")
    world.upload(world.owner, "later", facts("l", 4))
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, "later")
        gone = sorted(s.execute(select(DataRow.row_hash).where(DataRow.datanet == "later")).scalars())[0]
        review.review(s, world.ledger, world.owner, "later", decision="reject", reason="consent withdrawn", rows=[gone])
    with world.tx() as s:
        out = snapshots.export_snapshot(s, world.owner, "later", "latest", tmp_path / "later")
        kept = load_examples(s, world.owner, [SourceCfg(datanet="later")])
    exported = (out / "data.jsonl").read_text().splitlines()
    assert len(exported) == 3 and len(kept.examples) == 3
    assert gone not in {e.row_hash for e in kept.examples}


def test_readable_slugs_agrees_with_can_read_for_everyone(world: World) -> None:
    from tally.datanets.tables import DatanetRow

    world.create("open-set")
    world.create("closed-set", visibility="private", uses=["train", "rag"])
    world.create("members-set", visibility="private", policy="invite-only")
    world.create("granted-set", visibility="private", uses=["rag"])
    with world.tx() as s:
        service.invite_member(s, world.ledger, world.owner, "members-set", world.alice.address)
        req = access.request_access(s, world.ledger, world.dev, "granted-set", uses=["rag"], purpose="search")
        access.decide_access(s, world.ledger, world.owner, "granted-set", req.id, grant=True, reason="ok")
        access.request_access(s, world.ledger, world.bob, "closed-set", uses=["train"], purpose="pending only")
    with world.ledger.store.read() as s:
        rows = list(s.execute(select(DatanetRow)).scalars())
        for who in (world.owner, world.alice, world.bob, world.dev, world.consumer, world.admin):
            assert service.readable_slugs(s, who) == {r.slug for r in rows if service.can_read(s, who, r)}, who.name
        assert service.readable_slugs(s, None) == {"open-set"}
        assert service.readable_slugs(s, world.dev) == {"open-set", "granted-set"}
