"""Epochs: everything accrued and not yet paid closes into one payout Merkle tree.

Closing sums the unpaid lines per account, builds the tree (see `tally.rewards.merkle`), stores the root, the
total and every account's proof, marks the lines as paid by this epoch, and writes one `rewards.epoch_closed`
ledger event with the root: the value the chain's RewardDistributor is given, against which claims are checked.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import ClassVar

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tally.ledger import Event, Ledger
from tally.ledger.events import now_ts
from tally.rewards.accrual import add_to_balances
from tally.rewards.errors import NothingToPayError, RewardsNotFoundError
from tally.rewards.merkle import LEAF_ENCODING, payout_tree
from tally.rewards.statement import checksum
from tally.rewards.tables import AccrualLineRow, AccrualRow, EpochRow, PayoutRow

TREE_FORMAT = "openzeppelin-standard-v1"
_CHUNK = 5000  # ids per UPDATE: well under every backend's bound-parameter limit


class EpochClosed(Event):
    event_type: ClassVar[str] = "rewards.epoch_closed"
    epoch: int
    root: str
    total: str
    accounts: int
    accruals: int
    last_accrual_seq: int  # the newest accrual entry this epoch pays
    tree_format: str
    leaf_encoding: list[str]


@dataclass(frozen=True)
class PayoutProof:
    """Everything a claimant submits, and the root it is checked against."""

    epoch: int
    index: int
    account: str
    amount: int
    proof: tuple[str, ...]
    root: str

    def as_json(self) -> dict[str, object]:
        return {
            "epoch": self.epoch, "index": self.index, "account": self.account, "amount": str(self.amount),
            "proof": list(self.proof), "root": self.root,
        }  # fmt: skip


@dataclass(frozen=True)
class Epoch:
    number: int
    root: str
    total: int
    accounts: int
    accruals: int
    created_at: str
    ledger_seq: int

    def as_json(self) -> dict[str, object]:
        return {
            "epoch": self.number, "root": self.root, "total": str(self.total), "accounts": self.accounts,
            "accruals": self.accruals, "created_at": self.created_at, "ledger_seq": self.ledger_seq,
        }  # fmt: skip


def _epoch(row: EpochRow) -> Epoch:
    return Epoch(row.number, row.root, int(row.total), row.accounts, row.accruals, row.created_at, row.ledger_seq)


def last_epoch_number(session: Session) -> int:
    return session.execute(select(func.max(EpochRow.number))).scalar() or 0


def close_epoch(session: Session, ledger: Ledger, *, actor: str = "rewards") -> Epoch:
    """Close the next epoch over all unpaid accruals, in the caller's transaction."""
    unpaid = session.execute(
        select(AccrualLineRow.id, AccrualLineRow.account, AccrualLineRow.amount, AccrualRow.inference,
               AccrualRow.ledger_seq)
        .join(AccrualRow, AccrualRow.inference == AccrualLineRow.inference)
        .where(AccrualLineRow.epoch.is_(None))
    ).all()  # fmt: skip
    totals: dict[str, int] = defaultdict(int)
    for _, account, amount, _, _ in unpaid:
        totals[account] += int(amount)
    amounts = {a: t for a, t in totals.items() if t > 0}
    previous = last_epoch_number(session)
    if not amounts:
        since = f"since epoch {previous}" if previous else "yet"
        raise NothingToPayError(f"nothing to pay: no unpaid rewards {since} (accrue some answers first)")
    tree = payout_tree(amounts)
    number = previous + 1
    total = sum(amounts.values())
    accruals = len({row.inference for row in unpaid})
    event = EpochClosed(
        epoch=number, root=tree.root, total=str(total), accounts=len(amounts), accruals=accruals,
        last_accrual_seq=max(row.ledger_seq for row in unpaid), tree_format=TREE_FORMAT,
        leaf_encoding=list(LEAF_ENCODING),
    )  # fmt: skip
    appended = ledger.append(session, event, actor=actor)
    row = EpochRow(number=number, root=tree.root, total=str(total), accounts=len(amounts), accruals=accruals,
                   created_at=now_ts(), ledger_seq=appended.seq)  # fmt: skip
    session.add(row)
    session.flush()
    session.add_all(
        PayoutRow(epoch=number, account=p.account, index=p.index, amount=str(p.amount), proof=list(p.proof))
        for p in tree.payouts
    )
    ids = [r.id for r in unpaid]
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        session.execute(update(AccrualLineRow).where(AccrualLineRow.id.in_(chunk)).values(epoch=number))
    add_to_balances(session, amounts, accrued=False)
    session.flush()
    return _epoch(row)


def list_epochs(session: Session) -> list[Epoch]:
    return [_epoch(r) for r in session.execute(select(EpochRow).order_by(EpochRow.number)).scalars()]


def get_epoch(session: Session, number: int) -> Epoch:
    row = session.get(EpochRow, number)
    if row is None:
        raise RewardsNotFoundError(f"no epoch {number} (closed epochs: 1..{last_epoch_number(session)})")
    return _epoch(row)


def payout_proof(session: Session, address: str, epoch: int | None = None) -> PayoutProof:
    """The proof of `address`'s payout in `epoch`, or in the latest epoch that pays it."""
    account = checksum(address)
    query = select(PayoutRow, EpochRow).join(EpochRow, EpochRow.number == PayoutRow.epoch)
    query = query.where(PayoutRow.account == account)
    if epoch is not None:
        get_epoch(session, epoch)
        query = query.where(PayoutRow.epoch == epoch)
    found = session.execute(query.order_by(PayoutRow.epoch.desc()).limit(1)).first()
    if found is None:
        where = f"epoch {epoch}" if epoch is not None else "any closed epoch"
        raise RewardsNotFoundError(f"{account} has no payout in {where}")
    payout, row = found
    return PayoutProof(row.number, payout.index, payout.account, int(payout.amount), tuple(payout.proof), row.root)
