"""A contributor's statement: what they earned, answer by answer, and why; and everyone's balances.

Each item is one line of one accrual: the answer (inference id, model, when it was answered), the role the
account was paid in, its attribution share (data role), the amount, and the epoch that paid it or "unpaid".
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.rewards.errors import RewardsError
from tally.rewards.tables import AccrualLineRow, AccrualRow, BalanceRow


def checksum(address: str) -> str:
    checked = checksum_address(address)
    if checked is None:
        raise RewardsError(f"{address!r} {NOT_AN_ADDRESS}")
    return checked


@dataclass(frozen=True)
class StatementItem:
    inference: str
    model: str
    time: str  # when the answer was given
    role: str
    share: float | None
    amount: int
    epoch: int | None  # None: not yet in a closed epoch

    def as_json(self) -> dict[str, object]:
        return {
            "inference": self.inference, "model": self.model, "time": self.time, "role": self.role,
            "share": self.share, "amount": str(self.amount), "epoch": self.epoch if self.epoch else "unpaid",
        }  # fmt: skip


@dataclass(frozen=True)
class Balance:
    account: str
    accrued: int
    paid: int

    @property
    def unpaid(self) -> int:
        return self.accrued - self.paid

    def as_json(self) -> dict[str, object]:
        return {"account": self.account, "accrued": str(self.accrued), "paid": str(self.paid),
                "unpaid": str(self.unpaid)}  # fmt: skip


@dataclass(frozen=True)
class Statement(Balance):
    items: tuple[StatementItem, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {**super().as_json(), "items": [i.as_json() for i in self.items]}


def statement(session: Session, address: str) -> Statement:
    """Every amount `address` was credited, oldest answer first, with totals (paid = in a closed epoch)."""
    account = checksum(address)
    rows = session.execute(
        select(AccrualLineRow, AccrualRow)
        .join(AccrualRow, AccrualRow.inference == AccrualLineRow.inference)
        .where(AccrualLineRow.account == account)
        .order_by(AccrualRow.ledger_seq, AccrualLineRow.id)
    ).all()
    items = tuple(
        StatementItem(a.inference, a.model, a.answered_at, line.role, line.share, int(line.amount), line.epoch)
        for line, a in rows
    )
    accrued = sum(i.amount for i in items)
    paid = sum(i.amount for i in items if i.epoch is not None)
    return Statement(account, accrued, paid, items)


def balances(session: Session) -> list[Balance]:
    """Running totals of every account ever credited, largest unpaid first."""
    rows = session.execute(select(BalanceRow)).scalars()
    out = [Balance(r.account, int(r.accrued), int(r.paid)) for r in rows]
    return sorted(out, key=lambda b: (-b.unpaid, -b.accrued, b.account))
