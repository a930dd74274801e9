"""Splitting a fee: integer parts that always sum exactly to the fee, to the right people."""

from __future__ import annotations

from eth_utils import to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.rewards.conftest import ALICE, BOB, CAROL, DEV, make_record

from tally.rewards import DEFAULT_POLICY, FeePolicy, compute_fee, largest_remainder, split_fee

P = DEFAULT_POLICY
ADDRESSES = [to_checksum_address("0x" + f"{(i + 1) * 0x1F3D:040x}") for i in range(40)]


def by_role(lines: list) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line.role] = out.get(line.role, 0) + line.amount
    return out


@settings(max_examples=300, deadline=None)
@given(
    fee=st.integers(min_value=0, max_value=10**30),
    shares=st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=0, max_size=40),
    developer=st.booleans(),
)
def test_amounts_sum_exactly_to_the_fee(fee: int, shares: list[float], developer: bool) -> None:
    record = make_record(shares=dict(zip(ADDRESSES, shares, strict=False)), developer=DEV if developer else None)
    lines = split_fee(fee, record, P)
    assert sum(x.amount for x in lines) == fee
    assert all(x.amount >= 0 for x in lines)
    data = [x for x in lines if x.role == "data"]
    if any(s > 0 for s in shares):
        assert {x.account for x in data} == {a for a, s in zip(ADDRESSES, shares, strict=False) if s > 0}
    else:
        assert [(x.account, x.share) for x in data] == [(P.accounts.reserve, None)]


@given(total=st.integers(0, 10**24), weights=st.lists(st.integers(0, 10**6), min_size=1, max_size=30))
def test_largest_remainder_is_exact_and_within_one_unit(total: int, weights: list[int]) -> None:
    if not any(weights):
        return
    parts = largest_remainder(total, weights)
    assert sum(parts) == total
    for part, w in zip(parts, weights, strict=True):
        quota = total * w / sum(weights)
        assert part == 0 if w == 0 else abs(part - quota) < 1 + 1e-6 * quota


def test_fee_from_token_counts() -> None:
    assert compute_fee(P, 300, 200) == 1000  # 500 tokens at 2000 per 1000
    split_prices = FeePolicy.model_validate(
        P.model_dump() | {"price_per_1k_tokens": {"prompt": 1000, "completion": 3000}}
    )
    assert compute_fee(split_prices, 300, 200) == 900
    assert compute_fee(P, 0, 1) == 2  # rounded down, never up


def test_the_default_split_of_one_answer() -> None:
    lines = split_fee(1000, make_record(), P)
    assert by_role(lines) == {"data": 600, "developer": 200, "platform": 150, "reserve": 50}
    assert {(x.account, x.amount, x.share) for x in lines if x.role == "data"} == {(ALICE, 450, 0.75), (BOB, 150, 0.25)}
    assert [x.account for x in lines if x.role == "developer"] == [DEV]


def test_a_contributor_with_no_share_gets_nothing() -> None:
    lines = split_fee(1000, make_record(shares={ALICE: 1.0, CAROL: 0.0}), P)
    assert CAROL not in {x.account for x in lines}
    assert [x.amount for x in lines if x.account == ALICE] == [600]


def test_empty_shares_send_the_data_part_to_the_reserve() -> None:
    lines = split_fee(1000, make_record(shares={}), P)
    reserve = [x for x in lines if x.account == P.accounts.reserve]
    assert {(x.role, x.amount) for x in reserve} == {("data", 600), ("reserve", 50)}


def test_no_developer_sends_the_developer_part_to_the_platform() -> None:
    lines = split_fee(1000, make_record(developer=None), P)
    assert [(x.account, x.amount) for x in lines if x.role == "developer"] == [(P.accounts.platform, 200)]


def test_paid_extra_parties_share_the_platform_part() -> None:
    policy = FeePolicy.model_validate(
        P.model_dump() | {"paid": {"base_model": True, "evaluators": True, "pipeline_author": True},
                          "accounts": P.accounts.model_dump() | {"base_model": "0x" + "ba" * 20}}
    )  # fmt: skip
    record = make_record(evaluators=[ALICE, CAROL, CAROL], pipeline_author=BOB)
    lines = split_fee(1000, record, policy)
    assert sum(x.amount for x in lines) == 1000
    platform = {x.role: x.amount for x in lines if x.role not in ("data", "developer", "reserve", "evaluator")}
    assert sum(platform.values()) + sum(x.amount for x in lines if x.role == "evaluator") == 150
    assert platform == {"platform": 38, "base_model": 38, "pipeline_author": 37}
    assert sorted(x.amount for x in lines if x.role == "evaluator") == [18, 19]
    # Switched off (the default), nobody but the platform is paid from its part.
    assert {x.role for x in split_fee(1000, record, P)} == {"data", "developer", "platform", "reserve"}
