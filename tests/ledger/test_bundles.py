"""Entry bundles: length-prefixed entries, concatenated leaf hashes, cut at tile boundaries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tally.ledger import bundles


@given(st.lists(st.binary(max_size=300), max_size=20))
def test_pack_and_unpack_round_trip(entries: list[bytes]) -> None:
    assert bundles.unpack(bundles.pack(entries), len(entries)) == entries


def test_malformed_bundles_are_named() -> None:
    blob = bundles.pack([b"abc", b"de"])
    with pytest.raises(bundles.BundleError, match="after its 1 entries"):
        bundles.unpack(blob, 1)
    with pytest.raises(bundles.BundleError, match="before entry 2"):
        bundles.unpack(blob, 3)
    with pytest.raises(bundles.BundleError, match="runs past"):
        bundles.unpack(blob[:-1], 2)
    with pytest.raises(bundles.BundleError, match="64 bytes of leaf hashes for 3"):
        bundles.split_hashes(bytes(64), 3)


@given(st.integers(0, 2000), st.integers(1, 2000), st.integers(1, 8))
def test_spans_cover_the_range_and_never_cross_a_tile(start: int, length: int, height: int) -> None:
    spans = list(bundles.spans(start, start + length, height))
    assert [s for s, _ in spans] == [start] + [e for _, e in spans[:-1]]
    assert spans[-1][1] == start + length
    assert all(s >> height == (e - 1) >> height and e > s for s, e in spans)
