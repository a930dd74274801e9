"""Credits: requesters pay for their answers from a prepaid balance, so every fee split among contributors is a
fee someone paid.

An admin credits an account (`rewards.credited`); settling an answer charges its fee to the requester
(`rewards.charged`) in the transaction that accrues it, and the accrual splits exactly what was charged. Each
balance change and its ledger event commit together. A balance never goes below zero: the charge is the fee, or
what is left when concurrent answers spent the credit first (admission checks each answer alone).
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import ClassVar

from sqlalchemy.orm import Session

from tally.ledger import Event, Ledger
from tally.ledger.events import now_ts
from tally.rewards.errors import InsufficientCreditError, RewardsError
from tally.rewards.policy import FeePolicy
from tally.rewards.split import compute_fee
from tally.rewards.statement import CreditMove, checksum
from tally.rewards.tables import CreditAccountRow, CreditMoveRow
from tally.store import Store

MAX_AMOUNT = 2**256 - 1  # a balance is paid out as uint256 amounts


class RewardsCredited(Event):
    """Credit added to an account's prepaid balance, and by whom."""

    event_type: ClassVar[str] = "rewards.credited"
    account: str
    amount: str  # base units, decimal (uint256 may exceed what JSON numbers carry exactly)
    by: str
    balance: str  # after the credit


class RewardsCharged(Event):
    """One answer's fee taken from its requester's balance; `amount` is what the answer's accrual splits."""

    event_type: ClassVar[str] = "rewards.charged"
    inference: str
    account: str
    amount: str
    fee: str  # the policy's price of the answer; more than `amount` only when the balance ran short
    balance: str  # after the charge


def _account_row(session: Session, account: str) -> CreditAccountRow | None:
    # FOR UPDATE on PostgreSQL, so two charges cannot both spend the same balance; SQLite writers are serial
    return session.get(CreditAccountRow, account, with_for_update=True)


def add_credit(session: Session, ledger: Ledger, account: str, amount: int, *, by: str) -> CreditMove:
    """Credit `amount` base units to `account` (an address); the ledger records who did it."""
    address = checksum(account)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount <= 0:
        raise RewardsError(f"a credit must be a positive whole number of base units, not {amount!r}", param="amount")
    row = _account_row(session, address)
    if row is None:
        row = CreditAccountRow(account=address, balance="0", credited="0", charged="0")
        session.add(row)
    balance = int(row.balance) + amount
    if balance > MAX_AMOUNT:
        raise RewardsError(f"crediting {amount} would take {address}'s balance past 2^256-1 base units", param="amount")
    event = RewardsCredited(account=address, amount=str(amount), by=by, balance=str(balance))
    appended = ledger.append(session, event, actor=by)
    row.balance, row.credited = str(balance), str(int(row.credited) + amount)
    move = CreditMove("credit", amount, balance, None, by, now_ts(), appended.seq)
    session.add(_move_row(address, move))
    session.flush()
    return move


def charge(session: Session, ledger: Ledger, inference: str, account: str, fee: int, *, actor: str) -> int | None:
    """Take `fee` (at most the balance) from `account` for `inference`; the amount taken, which is what the
    answer's accrual must split. None when `account` was never credited (nothing to charge it to)."""
    row = _account_row(session, account)
    if row is None:
        return None
    amount = min(fee, int(row.balance))
    after = int(row.balance) - amount
    event = RewardsCharged(inference=inference, account=account, amount=str(amount), fee=str(fee), balance=str(after))
    appended = ledger.append(session, event, actor=actor)
    row.balance, row.charged = str(after), str(int(row.charged) + amount)
    session.add(_move_row(account, CreditMove("charge", amount, after, inference, None, now_ts(), appended.seq)))
    session.flush()
    return amount


def _move_row(account: str, m: CreditMove) -> CreditMoveRow:
    return CreditMoveRow(
        account=account, kind=m.kind, amount=str(m.amount), balance=str(m.balance), inference=m.inference, by=m.by,
        at=m.time, ledger_seq=m.ledger_seq,
    )  # fmt: skip


def max_cost(policy: FeePolicy, prompt_tokens: int, max_tokens: int) -> int:
    """The most an answer can cost: its prompt and every token it may generate, at the policy's prices."""
    return compute_fee(policy, prompt_tokens, max_tokens)


class CreditHolds:
    """Credit set aside for answers being generated, per account, so answers running at once cannot together spend
    more than the balance: admission counts what is held, and an answer releases its hold once it is settled or
    has failed. One process's view (held by its runtime); holds older than `max_age_s` lapse, so a lost release
    cannot lock an account's credit for good."""

    def __init__(self, max_age_s: float = 900.0) -> None:
        self._held: dict[int, tuple[str, int, float]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.max_age_s = max_age_s

    def admit(self, account: str, needed: int, balance: int) -> tuple[int | None, int]:
        """(a hold for `needed`, or None when the balance less what is held cannot cover it; what is held)."""
        now = time.monotonic()
        with self._lock:  # check and take together: two answers cannot both pass on the same credit
            for hold, (_, _, at) in list(self._held.items()):
                if now - at > self.max_age_s:
                    del self._held[hold]
            held = sum(amount for who, amount, _ in self._held.values() if who == account)
            if balance - held < needed:
                return None, held
            hold = next(self._ids)
            self._held[hold] = (account, needed, now)
            return hold, held

    def release(self, hold: int | None) -> None:
        if hold is not None:
            with self._lock:
                self._held.pop(hold, None)


def require_credit(
    store: Store, policy: FeePolicy, account: str, prompt_tokens: int, max_tokens: int, holds: CreditHolds | None = None
) -> int | None:
    """Refuse (kind `limit`) an answer whose most possible cost is more than `account`'s balance less what answers
    already running hold; with `holds`, set that cost aside and return the hold to release once settled."""
    needed = max_cost(policy, prompt_tokens, max_tokens)
    with store.read() as s:
        row = s.get(CreditAccountRow, account)
        balance = int(row.balance) if row is not None else 0
    if holds is not None:
        hold, held = holds.admit(account, needed, balance)
        if hold is not None:
            return hold
        balance -= held
    if balance < needed:
        raise InsufficientCreditError(
            f"account {account} holds {balance} base units of credit, and this answer may cost up to {needed} "
            f"({prompt_tokens} prompt tokens + max_tokens {max_tokens} at the fee policy's prices): ask an admin "
            f"to add credit (`tally rewards credit {account} AMOUNT` or POST /v1/rewards/credits), or ask for "
            "fewer max_tokens",
            balance=balance, needed=needed, window="credit",
        )  # fmt: skip
    return None
