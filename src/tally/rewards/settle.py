"""Settle one attributed answer: its record, ledger event, the requester's charge and the fee accrual commit
together or not at all."""

from __future__ import annotations

from tally.attribution.service import Attributed, commit
from tally.ledger import Ledger
from tally.rewards.accrual import accrue
from tally.rewards.credits import charge
from tally.rewards.policy import FeePolicy
from tally.rewards.split import compute_fee


def settle_answer(
    ledger: Ledger, attributed: Attributed, policy: FeePolicy, *, actor: str, charge_requester: bool = False
) -> int:
    """One transaction: the attribution record (and its event), the requester's charge, then the fee's accrual.
    Returns the record's seq.

    An anonymous answer (no requester) is recorded but accrues nothing: nobody pays its fee, so crediting one would
    mint rewards from nothing (an owner could loop anonymous requests over their own data and earn a payout). With
    `charge_requester` (the setting `rewards.charge_requesters`) the requester pays the fee from its credit and the
    accrual splits exactly what was paid (an answer whose credit does not cover it was refused before generation);
    without it (a local trial) the policy's fee is accrued unbacked."""
    record = attributed.record
    with ledger.store.transaction() as s:
        appended = commit(s, ledger, attributed, actor=actor)
        if record.requested_by is not None:
            fee = compute_fee(policy, record.prompt_tokens, record.completion_tokens)
            paid = fee
            if charge_requester:  # never credited: nothing was paid (prepare refuses such an answer first)
                paid = charge(s, ledger, record.id, record.requested_by, fee, actor=actor) or 0
            accrue(s, ledger, record, policy, actor=actor, fee=paid)
    return appended.seq
