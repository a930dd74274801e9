"""Accrual: one attributed answer's fee becomes contributor rewards, in the caller's transaction.

One `rewards.accrued` ledger event commits to the fee and every recipient's amount; the same transaction
writes the accrual, its lines and the running balances, so the database and the ledger never disagree. An
inference is accrued once: a second accrual for the same id is refused.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from tally.attribution import AttributionRecord
from tally.ledger import Event, Ledger
from tally.ledger.events import now_ts
from tally.rewards.errors import DuplicateAccrualError
from tally.rewards.policy import FeePolicy
from tally.rewards.split import Line, compute_fee, split_fee
from tally.rewards.tables import AccrualLineRow, AccrualRow, BalanceRow


class AccruedLine(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account: str
    role: str  # data, developer, platform, base_model, evaluator, pipeline_author, reserve
    amount: str  # base units, decimal (uint256 may exceed what JSON numbers carry exactly)
    share: float | None = None


class RewardsAccrued(Event):
    """The fee of one answer and who receives which part of it."""

    event_type: ClassVar[str] = "rewards.accrued"
    inference: str
    model: str
    policy_hash: str
    currency: str
    decimals: int
    prompt_tokens: int
    completion_tokens: int
    fee: str
    lines: list[AccruedLine]


@dataclass(frozen=True)
class Accrual:
    inference: str
    model: str
    fee: int
    lines: tuple[Line, ...]
    accrued_at: str
    ledger_seq: int

    def amounts(self) -> dict[str, int]:
        """Account -> total base units of this fee (an account may hold several roles)."""
        out: dict[str, int] = defaultdict(int)
        for line in self.lines:
            out[line.account] += line.amount
        return dict(out)


def add_to_balances(session: Session, amounts: dict[str, int], *, accrued: bool) -> None:
    """Add to each account's running `accrued` (or `paid`) total."""
    for account, amount in amounts.items():
        row = session.get(BalanceRow, account)
        if row is None:
            row = BalanceRow(account=account, accrued="0", paid="0")
            session.add(row)
        if accrued:
            row.accrued = str(int(row.accrued) + amount)
        else:
            row.paid = str(int(row.paid) + amount)


def accrue(
    session: Session,
    ledger: Ledger,
    record: AttributionRecord,
    policy: FeePolicy,
    *,
    actor: str = "rewards",
    fee: int | None = None,
) -> Accrual:
    """Price `record`'s answer, split the fee, and write the ledger event, the lines and the balances. `fee` is
    what the requester was charged, when that is what there is to split (see `tally.rewards.credits`)."""
    existing = session.get(AccrualRow, record.id)
    if existing is not None:
        raise DuplicateAccrualError(
            f"inference {record.id} was already accrued (ledger entry {existing.ledger_seq}); a fee is accrued once"
        )
    if fee is None:
        fee = compute_fee(policy, record.prompt_tokens, record.completion_tokens)
    lines = split_fee(fee, record, policy)
    event = RewardsAccrued(
        inference=record.id,
        model=record.model,
        policy_hash=policy.digest(),
        currency=policy.currency.symbol,
        decimals=policy.currency.decimals,
        prompt_tokens=record.prompt_tokens,
        completion_tokens=record.completion_tokens,
        fee=str(fee),
        lines=[AccruedLine(account=x.account, role=x.role, amount=str(x.amount), share=x.share) for x in lines],
    )
    appended = ledger.append(session, event, actor=actor)
    accrued_at = now_ts()
    session.add(
        AccrualRow(
            inference=record.id, model=record.model, policy_hash=event.policy_hash,
            prompt_tokens=record.prompt_tokens, completion_tokens=record.completion_tokens, fee=str(fee),
            answered_at=record.created_at, accrued_at=accrued_at, ledger_seq=appended.seq,
        )
    )  # fmt: skip
    session.flush()  # the accrual row exists before its lines reference it
    session.add_all(
        AccrualLineRow(inference=record.id, account=x.account, role=x.role, share=x.share, amount=str(x.amount))
        for x in lines
    )
    accrual = Accrual(record.id, record.model, fee, tuple(lines), accrued_at, appended.seq)
    add_to_balances(session, accrual.amounts(), accrued=True)
    session.flush()
    return accrual
