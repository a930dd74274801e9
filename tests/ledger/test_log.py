"""The stored log: appends commit with the caller's transaction; roots and proofs match the reference tree."""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree
from sqlalchemy import func, select, text
from tests.conftest import Note, append_notes

from tally.config import Settings
from tally.ledger import Ledger, LedgerLimitError, bundles, decode_entry, merkle, open_ledger
from tally.ledger.tables import LedgerBundle, LedgerNode
from tally.store import Store


@pytest.fixture(params=[2, 8], ids=["tiles-of-4", "tiles-of-256"])
def ledger(request: pytest.FixtureRequest, settings: Settings, store: Store) -> Ledger:
    """Tiles of 4 put many tile boundaries, stored nodes and multi-bundle batches into small tests."""
    return open_ledger(
        settings.model_copy(update={"ledger": settings.ledger.model_copy(update={"tile_height": request.param})}), store
    )


def stored_leaves(ledger: Ledger) -> list[bytes]:
    with ledger.store.read() as s:
        rows = s.execute(select(LedgerBundle.entry_count, LedgerBundle.leaf_hashes).order_by(LedgerBundle.seq))
        return [h for count, blob in rows for h in bundles.split_hashes(bytes(blob), count)]


def test_first_entry_records_the_log_key(ledger: Ledger) -> None:
    entry = decode_entry(ledger.entry(0))
    assert (entry.seq, entry.type, entry.actor) == (0, "ledger.created", "ledger")
    assert entry.payload["verifier_key"] == ledger.signer.verifier.encode()


def test_entries_carry_seq_timestamp_type_actor_inside_the_hashed_bytes(ledger: Ledger) -> None:
    (seq,) = append_notes(ledger, 1)
    body = ledger.entry(seq)
    entry = decode_entry(body)
    assert entry.seq == seq and entry.type == "test.note" and entry.actor == "alice"
    assert entry.ts.endswith("Z") and entry.payload == {"text": "note-0"}
    assert stored_leaves(ledger)[seq] == merkle.leaf_hash(body)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.integers(1, 40), min_size=1, max_size=6))
def test_roots_and_proofs_match_the_reference_for_random_sizes(ledger: Ledger, batches: list[int]) -> None:
    for n in batches:
        append_notes(ledger, n)
    leaves = stored_leaves(ledger)
    size = ledger.size()
    assert len(leaves) == size
    for n in sorted({1, size // 3 or 1, size // 2 or 1, size - 1 or 1, size}):
        root = ledger.root(n)
        assert root == merkle.root_of(leaves[:n])
        for i in sorted({0, n // 2, n - 1}):
            merkle.verify_inclusion(i, n, leaves[i], ledger.inclusion_proof(i, n), root)
        if n < size:
            merkle.verify_consistency(n, size, root, ledger.root(), ledger.consistency_proof(n, size))


def test_root_agrees_with_pymerkle_over_the_same_entries(ledger: Ledger) -> None:
    append_notes(ledger, 77)
    tree = InmemoryTree(algorithm="sha256")
    for body in ledger.entries(0, 1000):
        tree.append_entry(body)
    assert ledger.root() == tree.get_root()
    assert ledger.root(40) == tree.get_root(40)


def test_batched_and_single_appends_build_the_same_tree_shape(ledger: Ledger) -> None:
    append_notes(ledger, 10)
    for i in range(7):
        with ledger.store.transaction() as s:
            ledger.append(s, Note(text=f"single-{i}"), actor="bob")
    size = ledger.size()
    assert size == 18
    with ledger.store.read() as s:
        nodes = s.execute(select(func.count()).select_from(LedgerNode)).scalar_one()
    h = ledger.tile_height
    # stored: every completed perfect subtree of height >= h
    assert nodes == sum(size >> level for level in range(h, size.bit_length()))
    assert ledger.root() == merkle.root_of(stored_leaves(ledger))


def test_append_rolls_back_with_the_callers_transaction(ledger: Ledger) -> None:
    before = ledger.size()
    with pytest.raises(RuntimeError), ledger.store.transaction() as s:
        ledger.append(s, Note(text="doomed"), actor="alice")
        s.execute(text("SELECT 1"))
        raise RuntimeError("the caller's own work failed")
    assert ledger.size() == before
    append_notes(ledger, 3)
    assert ledger.root() == merkle.root_of(stored_leaves(ledger))


def test_batch_limit_is_a_setting(ledger: Ledger) -> None:
    ledger.max_batch = 5
    with pytest.raises(LedgerLimitError, match="max_batch=5") as info, ledger.store.transaction() as s:
        ledger.append_batch(s, [(Note(text="x"), "a")] * 6)
    assert info.value.kind == "limit" and info.value.values == {"limit": 5, "size": 6}


def test_concurrent_appends_from_threads_lose_nothing(ledger: Ledger) -> None:
    def worker(name: str) -> None:
        for i in range(15):
            with ledger.store.transaction() as s:
                ledger.append(s, Note(text=f"{name}-{i}"), actor=name)

    threads = [threading.Thread(target=worker, args=(f"w{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.size() == 1 + 60
    texts = {decode_entry(b).payload.get("text") for b in ledger.entries(1, 100)}
    assert len(texts) == 60
    assert ledger.root() == merkle.root_of(stored_leaves(ledger))


def test_out_of_range_requests_are_clear_errors(ledger: Ledger) -> None:
    size = ledger.size()
    with pytest.raises(ValueError, match="outside") as info:
        ledger.root(size + 1)
    assert isinstance(info.value, merkle.ProofError) and info.value.reason == "size_out_of_range"
    with pytest.raises(ValueError, match="not below") as info:
        ledger.inclusion_proof(size, size)
    assert isinstance(info.value, merkle.ProofError) and info.value.reason == "index_out_of_range"
    assert info.value.values == {"index": size, "size": size}
    with pytest.raises(KeyError, match="no ledger entry"):
        ledger.entry(size + 5)


def test_checkpoints_are_signed_and_only_made_when_the_log_grew(ledger: Ledger, settings) -> None:
    first = ledger.checkpoint()
    assert ledger.checkpoint() == first
    append_notes(ledger, 3)
    second = ledger.checkpoint()
    assert second.size == first.size + 3
    assert second.note.startswith(f"{ledger.origin}\n{second.size}\n")
    assert settings.witness_path.read_text() == second.note


def test_checkpoints_signed_by_many_threads_at_once_keep_the_newest_witness(ledger: Ledger, settings) -> None:
    """Readers sign checkpoints while writers append (a server does both on worker threads): every call succeeds,
    and the witness file ends with the largest tree, whatever order the threads finished in."""
    errors: list[BaseException] = []

    def sign_checkpoints() -> None:
        try:
            for _ in range(15):
                ledger.checkpoint()
        except BaseException as exc:
            errors.append(exc)

    def append() -> None:
        try:
            append_notes(ledger, 15, prefix=f"t{threading.get_ident()}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sign_checkpoints) for _ in range(6)] + [threading.Thread(target=append)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    newest = ledger.checkpoint()
    assert settings.witness_path.read_text() == newest.note and newest.size == ledger.size()
    assert [p.name for p in settings.witness_path.parent.glob("*.tmp")] == []
