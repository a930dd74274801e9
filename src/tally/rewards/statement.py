"""A contributor's statement: what they earned, answer by answer, and why; and everyone's balances.

Each item is one line of one accrual: the answer (inference id, model, when it was answered), the role the
account was paid in, its attribution share (data role), the amount, and the epoch that paid it or "unpaid".
A requester's statement also shows its prepaid credit: every credit and every answer's charge, with the balance.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.rewards.errors import RewardsError
from tally.rewards.tables import (
    AccrualLineRow,
    AccrualRow,
    BalanceRow,
    CreditAccountRow,
    CreditMoveRow,
    EpochRow,
    PayoutRow,
)


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
class CreditMove:
    """One change of a prepaid balance: a `credit` (`by` who added it) or the `charge` for one answer."""

    kind: str  # credit, charge
    amount: int
    balance: int  # after this move
    inference: str | None
    by: str | None
    time: str
    ledger_seq: int

    def as_json(self) -> dict[str, object]:
        return {
            "kind": self.kind, "amount": str(self.amount), "balance": str(self.balance), "inference": self.inference,
            "by": self.by, "time": self.time, "ledger_seq": self.ledger_seq,
        }  # fmt: skip


@dataclass(frozen=True)
class Credit:
    """An account's prepaid credit: what is left, everything credited and charged, and each move, oldest first."""

    account: str
    balance: int = 0
    credited: int = 0
    charged: int = 0
    moves: tuple[CreditMove, ...] = ()

    def as_json(self) -> dict[str, object]:
        return {
            "account": self.account, "balance": str(self.balance), "credited": str(self.credited),
            "charged": str(self.charged), "moves": [m.as_json() for m in self.moves],
        }  # fmt: skip


@dataclass(frozen=True)
class Statement(Balance):
    items: tuple[StatementItem, ...] = ()
    credit: Credit | None = None  # None: the account was never credited

    def as_json(self) -> dict[str, object]:
        out = {**super().as_json(), "items": [i.as_json() for i in self.items]}
        return {**out, "credit": self.credit.as_json() if self.credit is not None else None}


def credit_of(session: Session, address: str) -> Credit:
    """`address`'s prepaid credit and its moves (all zero for an account never credited)."""
    account = checksum(address)
    row = session.get(CreditAccountRow, account)
    if row is None:
        return Credit(account)
    moves = session.execute(
        select(CreditMoveRow).where(CreditMoveRow.account == account).order_by(CreditMoveRow.ledger_seq)
    ).scalars()
    return Credit(
        account, int(row.balance), int(row.credited), int(row.charged),
        tuple(CreditMove(m.kind, int(m.amount), int(m.balance), m.inference, m.by, m.at, m.ledger_seq) for m in moves),
    )  # fmt: skip


def statement(session: Session, address: str, *, with_credit: bool = True) -> Statement:
    """Every amount `address` was credited, oldest answer first, with totals (paid = in a closed epoch); with
    `with_credit`, also its prepaid credit (for the account itself and admins)."""
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
    credited = with_credit and session.get(CreditAccountRow, account) is not None
    return Statement(account, accrued, paid, items, credit_of(session, account) if credited else None)


def balances(session: Session) -> list[Balance]:
    """Running totals of every account ever credited, largest unpaid first."""
    rows = session.execute(select(BalanceRow)).scalars()
    out = [Balance(r.account, int(r.accrued), int(r.paid)) for r in rows]
    return sorted(out, key=lambda b: (-b.unpaid, -b.accrued, b.account))


def balance_of(session: Session, address: str) -> Balance:
    """`address`'s running totals (accrued, paid, unpaid), read from one row (zero for an account never paid)."""
    account = checksum(address)
    row = session.get(BalanceRow, account)
    return Balance(account, int(row.accrued), int(row.paid)) if row is not None else Balance(account, 0, 0)


def statement_page(
    session: Session, address: str, *, before: int | None = None, limit: int = 50
) -> list[tuple[int, StatementItem]]:
    """One page of `address`'s statement, newest line first: (line id, item) pairs below line id `before` (keyset
    paging: the next page starts below the last id)."""
    account = checksum(address)
    query = (
        select(AccrualLineRow, AccrualRow)
        .join(AccrualRow, AccrualRow.inference == AccrualLineRow.inference)
        .where(AccrualLineRow.account == account)
    )
    if before is not None:
        query = query.where(AccrualLineRow.id < before)
    rows = session.execute(query.order_by(AccrualLineRow.id.desc()).limit(limit)).all()
    items = []
    for line, a in rows:
        item = StatementItem(a.inference, a.model, a.answered_at, line.role, line.share, int(line.amount), line.epoch)
        items.append((line.id, item))
    return items


@dataclass(frozen=True)
class Payout:
    epoch: int
    index: int
    amount: int
    root: str
    created_at: str


def payouts_of(session: Session, address: str, *, limit: int = 100) -> list[Payout]:
    """The closed epochs that pay `address`, newest first, with its amount in each."""
    account = checksum(address)
    rows = session.execute(
        select(PayoutRow, EpochRow)
        .join(EpochRow, EpochRow.number == PayoutRow.epoch)
        .where(PayoutRow.account == account)
        .order_by(PayoutRow.epoch.desc())
        .limit(limit)
    ).all()
    return [Payout(p.epoch, p.index, int(p.amount), e.root, e.created_at) for p, e in rows]
