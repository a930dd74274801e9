"""Pricing and splitting one fee into integer amounts that sum exactly to it.

Every division uses the largest-remainder method on exact fractions: each part gets the floor of its quota,
and the base units left over go one each to the parts with the largest remainders (ties to the earlier part).
The parts therefore always sum to the whole, no party is ever rounded up by more than one unit, and a party
with a zero weight never receives anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from tally.attribution import AttributionRecord
from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.rewards.errors import RewardsError
from tally.rewards.policy import FeePolicy


@dataclass(frozen=True)
class Line:
    """One recipient's part of one fee: `role` names the part of the split, `share` the attribution share."""

    account: str
    role: str
    amount: int
    share: float | None = None


def largest_remainder(total: int, weights: Sequence[float | int | Fraction]) -> list[int]:
    """Split `total` into integers proportional to `weights` (not all zero) that sum exactly to `total`."""
    if total < 0:
        raise ValueError(f"cannot split a negative amount ({total})")
    exact = [Fraction(w) for w in weights]
    if any(w < 0 for w in exact):
        raise ValueError("weights must not be negative")
    whole = sum(exact, Fraction(0))
    if whole == 0:
        raise ValueError("at least one weight must be positive")
    quotas = [total * w / whole for w in exact]
    parts = [q.numerator // q.denominator for q in quotas]
    left = total - sum(parts)
    by_remainder = sorted(range(len(parts)), key=lambda i: (parts[i] - quotas[i], i))  # largest remainder first
    for i in by_remainder[:left]:
        parts[i] += 1
    return parts


def compute_fee(policy: FeePolicy, prompt_tokens: int, completion_tokens: int) -> int:
    """Base units for an answer, rounded down (an answer is never charged for a token it did not use)."""
    if prompt_tokens < 0 or completion_tokens < 0:
        raise RewardsError(
            f"token counts must not be negative (prompt {prompt_tokens}, completion {completion_tokens})"
        )
    prompt_price, completion_price = policy.prices()
    return (prompt_tokens * prompt_price + completion_tokens * completion_price) // 1000


def _account(value: str, inference: str, what: str) -> str:
    address = checksum_address(value)
    if address is None:
        raise RewardsError(f"inference {inference}: {what} {value!r} {NOT_AN_ADDRESS}")
    return address


def _data_shares(record: AttributionRecord) -> dict[str, float]:
    """Contributor -> share, merged by address; shares need not sum to 1 (they are normalised)."""
    merged: dict[str, float] = {}
    for s in record.shares:
        if s.share < 0:
            raise RewardsError(f"inference {record.id}: contributor {s.account} has a negative share {s.share}")
        if s.share > 0:
            account = _account(s.account, record.id, "contributor")
            merged[account] = merged.get(account, 0.0) + s.share
    return merged


def _platform_parties(record: AttributionRecord, policy: FeePolicy) -> list[tuple[str, list[str]]]:
    """(role, accounts) sharing the platform part equally by role; a group role splits its slice equally."""
    parties: list[tuple[str, list[str]]] = [("platform", [policy.accounts.platform])]
    credits = record.credits
    if policy.paid.base_model and policy.accounts.base_model:
        parties.append(("base_model", [policy.accounts.base_model]))
    if policy.paid.evaluators and credits.evaluators:
        evaluators = dict.fromkeys(_account(a, record.id, "evaluator") for a in credits.evaluators)
        parties.append(("evaluator", list(evaluators)))
    if policy.paid.pipeline_author and credits.pipeline_author:
        parties.append(("pipeline_author", [_account(credits.pipeline_author, record.id, "pipeline author")]))
    return parties


def split_fee(fee: int, record: AttributionRecord, policy: FeePolicy) -> list[Line]:
    """The lines of one fee. A part of the split with a positive weight always gets a line (even if rounding
    makes it 0); data contributors with no share get none."""
    split = policy.split
    data, developer, platform, reserve = largest_remainder(
        fee, [split.data, split.developer, split.platform, split.reserve]
    )
    lines: list[Line] = []
    if split.data > 0:
        shares = _data_shares(record)
        if shares:
            amounts = largest_remainder(data, list(shares.values()))
            lines += [Line(a, "data", amt, share) for (a, share), amt in zip(shares.items(), amounts, strict=True)]
        else:
            lines.append(Line(policy.accounts.reserve, "data", data))  # no contributor beat the null baseline
    if split.developer > 0:
        dev = record.credits.developer
        lines.append(
            Line(_account(dev, record.id, "developer") if dev else policy.accounts.platform, "developer", developer)
        )
    if split.platform > 0:
        parties = _platform_parties(record, policy)
        for (role, accounts), slice_ in zip(parties, largest_remainder(platform, [1] * len(parties)), strict=True):
            for account, amount in zip(accounts, largest_remainder(slice_, [1] * len(accounts)), strict=True):
                lines.append(Line(account, role, amount))
    if split.reserve > 0:
        lines.append(Line(policy.accounts.reserve, "reserve", reserve))
    return lines
