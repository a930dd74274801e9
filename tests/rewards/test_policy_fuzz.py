"""Fee policies: parsed, or refused as a PolicyError naming the field, never another exception."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tally.rewards import PolicyError, parse_policy

VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=44),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
KEYS = ["currency", "decimals", "price", "split", "accounts", "per_1k_tokens", "data", "developer", "platform"]
POLICY = st.dictionaries(st.sampled_from(KEYS), VALUE | st.dictionaries(st.sampled_from(KEYS), VALUE), max_size=5)


@examples(max_examples=300, deadline=None)
@given(POLICY | VALUE)
def test_any_policy(raw: Any) -> None:
    try:
        parse_policy(raw)
    except PolicyError as exc:
        assert exc.message
