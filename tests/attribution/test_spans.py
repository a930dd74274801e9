"""Verbatim spans: exact maximal spans on small token lists, persistence, and the index over datanet rows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.datanets.conftest import World, alpaca, world  # noqa: F401 (world is a fixture)

from tally.attribution import spans
from tally.attribution.spans import DocKey, Span, SpanIndex
from tally.datanets import review


def key(i: int) -> DocKey:
    return DocKey(f"row{i}", "dn", f"contribution{i}", f"contributor{i}")


def index_of(*docs: list[int]) -> SpanIndex:
    return SpanIndex.build([(key(i), d) for i, d in enumerate(docs)], fingerprint="fp")


def found(index: SpanIndex, answer: list[int], min_len: int, **kw: Any) -> list[tuple[int, int, list[int], int]]:
    return [
        (s.answer_start, s.answer_end, [int(k.row_hash[3:]) for k in s.sources], s.total)
        for s in index.find(answer, min_len, **kw)
    ]


def test_maximal_spans_on_a_hand_made_case() -> None:
    index = index_of([1, 2, 3, 4, 5], [9, 3, 4, 5, 6, 7])
    # [1..5] from row 0 (1..6); [3..7] from row 1 (3..8); [2..5] and [4, 5] lie inside and are not reported
    assert found(index, [0, 1, 2, 3, 4, 5, 6, 7, 8], 2) == [(1, 6, [0], 1), (3, 8, [1], 1)]
    assert found(index, [0, 1, 2, 3, 4, 5, 6, 7, 8], 6) == []
    assert found(index, [0, 1, 2, 3, 4, 5, 6, 7, 8], 5) == [(1, 6, [0], 1), (3, 8, [1], 1)]
    assert found(index, [8, 8, 8], 1) == []
    span = index.find([3, 4, 5, 6], 2)[0]
    assert span == Span(0, 4, (key(1),), 1) and span.length == 4


def test_no_span_crosses_two_rows() -> None:
    index = index_of([1, 2, 3], [4, 5, 6])
    assert found(index, [2, 3, 4, 5], 2) == [(0, 2, [0], 1), (2, 4, [1], 1)]
    assert found(index, [2, 3, 4, 5], 3) == []
    assert found(index, [3, 4], 1) == [(0, 1, [0], 1), (1, 2, [1], 1)]


def test_min_len_is_respected_and_must_be_positive() -> None:
    index = index_of([1, 2, 3, 4], [7, 8])
    assert found(index, [1, 2, 3, 0, 7, 8], 3) == [(0, 3, [0], 1)]
    assert found(index, [1, 2, 3, 0, 7, 8], 2) == [(0, 3, [0], 1), (4, 6, [1], 1)]
    with pytest.raises(ValueError, match="min_len"):
        index.find([1, 2], 0)


def test_a_span_in_several_rows_lists_each_row_once_and_caps_the_sources() -> None:
    index = index_of([5, 1, 2, 3], [9, 9], [1, 2, 3, 0, 1, 2, 3], [4, 1, 2, 3, 4])
    assert found(index, [1, 2, 3], 3) == [(0, 3, [0, 2, 3], 3)]
    assert found(index, [1, 2, 3], 3, max_sources=2) == [(0, 3, [0, 2], 3)]


def test_ids_that_cannot_match_split_the_answer() -> None:
    index = index_of([1, 2, 3, 4])
    sep = index.separator
    assert sep == 0xFFFF and index.tokens.dtype == np.dtype(">u2")
    assert found(index, [1, 2, sep, 3, 4], 2) == [(0, 2, [0], 1), (3, 5, [0], 1)]
    assert found(index, [1, 2, -1, 3, 4, 10**9], 2) == [(0, 2, [0], 1), (3, 5, [0], 1)]


def test_large_vocabularies_use_four_bytes_per_token() -> None:
    index = index_of([70_000, 1, 65_535], [65_535, 2])
    assert index.tokens.dtype == np.dtype(">u4")
    assert found(index, [70_000, 1, 65_535, 2], 2) == [(0, 3, [0], 1), (2, 4, [1], 1)]
    assert found(index, [65_535, 2], 2) == [(0, 2, [1], 1)]


def test_bad_input_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token ids"):
        index_of([1, -2])
    with pytest.raises(FileNotFoundError, match=rf"no span index in {tmp_path}.*build_from_datanets"):
        SpanIndex.load(tmp_path)
    assert index_of().find([1, 2, 3], 1) == [] and index_of([], [1]).find([1], 1) == [Span(0, 1, (key(1),), 1)]


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    index = index_of([1, 2, 3, 4], [3, 4, 5], [])
    index.save(tmp_path / "spans")
    loaded = SpanIndex.load(tmp_path / "spans")
    assert isinstance(loaded.tokens, np.memmap) and isinstance(loaded.suffixes, np.memmap)
    assert loaded.keys == index.keys and loaded.fingerprint == "fp"
    assert np.array_equal(loaded.tokens, index.tokens) and np.array_equal(loaded.suffixes, index.suffixes)
    answer = [0, 2, 3, 4, 5, 1]
    assert loaded.find(answer, 2) == index.find(answer, 2) == [Span(1, 4, (key(0),), 1), Span(2, 5, (key(1),), 1)]
    (tmp_path / "spans" / "spans.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="rebuild"):
        SpanIndex.load(tmp_path / "spans")


def brute_force(docs: list[list[int]], answer: list[int], min_len: int) -> list[tuple[int, int, list[int], int]]:
    """Every occurring run of at least min_len, kept when no other occurring run contains it."""

    def holders(i: int, j: int) -> list[int]:
        run = answer[i:j]
        return [d for d, doc in enumerate(docs) if any(doc[k : k + len(run)] == run for k in range(len(doc)))]

    runs = [(i, j) for i in range(len(answer)) for j in range(i + min_len, len(answer) + 1) if holders(i, j)]
    maximal = [(i, j) for i, j in runs if not any(a <= i and j <= b and (a, b) != (i, j) for a, b in runs)]
    return [(i, j, holders(i, j), len(holders(i, j))) for i, j in sorted(maximal)]


@settings(max_examples=300, deadline=None)
@given(
    docs=st.lists(st.lists(st.integers(0, 3), max_size=12), max_size=5),
    answer=st.lists(st.integers(0, 4), max_size=12),
    min_len=st.integers(1, 4),
)
def test_find_matches_a_brute_force_search(docs: list[list[int]], answer: list[int], min_len: int) -> None:
    assert found(index_of(*docs), answer, min_len) == brute_force(docs, answer, min_len)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from tests.factory.conftest import _real_model_dir
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_real_model_dir())


def test_index_over_datanets_holds_accepted_rows_and_rebuilds_when_they_change(
    world: World,  # noqa: F811
    tokenizer: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builds: list[int] = []
    build = spans.build_from_datanets
    monkeypatch.setattr(spans, "build_from_datanets", lambda *a, **kw: builds.append(1) or build(*a, **kw))
    world.create("med-qa")  # owner-reviewed: the owner's rows are accepted, the others wait
    owner = world.upload(world.owner, "med-qa", alpaca([("Capital of Zarnia?", "Pellucid Harbor, founded in 1702.")]))
    alice = world.upload(world.alice, "med-qa", alpaca([("Towers?", "The glass towers of Vennick hum at dawn.")]))
    bob = world.upload(world.bob, "med-qa", alpaca([("Rivers?", "The river Oskel runs uphill every leap year.")]))
    directory = tmp_path / "spans"

    def current() -> SpanIndex:
        with world.ledger.store.read() as s:
            return spans.load_or_build(s, tokenizer, directory)

    def quoted(index: SpanIndex, text: str) -> list[DocKey]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        return [k for s in index.find(ids, min_len=4) for k in s.sources]

    index = current()
    assert builds == [1] and len(index.keys) == 1
    [source] = quoted(index, "It is Pellucid Harbor, founded in 1702 by sailors.")
    assert source.datanet == "med-qa" and source.contributor == world.owner.address and source.contribution == owner.id
    assert quoted(index, "the glass towers of Vennick hum at dawn") == []  # pending
    with world.tx() as s:
        review.review(s, world.ledger, world.owner, "med-qa", decision="reject", contribution=bob.id, reason="no")
    index = current()
    assert builds == [1] and isinstance(index.tokens, np.memmap)  # nothing accepted changed: loaded, not rebuilt
    assert quoted(index, "The river Oskel runs uphill every leap year.") == []  # rejected
    with world.tx() as s:
        review.review(s, world.ledger, world.owner, "med-qa", decision="accept", contribution=alice.id)
    index = current()
    assert builds == [1, 1] and len(index.keys) == 2
    [source] = quoted(index, "the glass towers of Vennick hum at dawn")
    assert source.contributor == world.alice.address and source.contribution == alice.id
    assert SpanIndex.load(directory).fingerprint == index.fingerprint
