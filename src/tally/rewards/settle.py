"""Settle one attributed answer: its record, ledger event and fee accrual commit together or not at all."""

from __future__ import annotations

from tally.attribution.service import Attributed, commit
from tally.ledger import Ledger
from tally.rewards.accrual import accrue
from tally.rewards.policy import FeePolicy


def settle_answer(ledger: Ledger, attributed: Attributed, policy: FeePolicy, *, actor: str) -> int:
    """One transaction: the attribution record (and its event), then the fee's accrual. Returns the record's seq.

    An anonymous answer (no requester) is recorded but accrues nothing: nobody pays its fee, so crediting one would
    mint rewards from nothing (an owner could loop anonymous requests over their own data and earn a payout)."""
    with ledger.store.transaction() as s:
        appended = commit(s, ledger, attributed, actor=actor)
        if attributed.record.requested_by is not None:
            accrue(s, ledger, attributed.record, policy, actor=actor)
    return appended.seq
