"""The rewards tables as the ledger's events give them.

- `rewards_accruals` and `rewards_accrual_lines`: each `rewards.accrued` entry's fee, tokens, model, policy and its
  lines (account, role, share, amount, in order); a line's epoch is the epoch that closed over it.
- `rewards_epochs` and `rewards_payouts`: each `rewards.epoch_closed` pays the unpaid accruals up to its
  `last_accrual_seq`; the payout tree is rebuilt from those lines (`payout_tree`) and its root, total, accounts and
  proofs compared with the entry and the tables.
- `rewards_balances`: per account, everything accrued and everything an epoch paid (unpaid is their difference).
- `rewards_credit_moves` and `rewards_credit_accounts`: every credit and charge, and the running balances, which
  must also equal the balance each entry records.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tally.ledger import Ledger, decode_entry
from tally.ledger.audit import Auditor, Divergence, Expected, Replayed, chunks, compare, extra_row
from tally.rewards.accrual import RewardsAccrued
from tally.rewards.credits import RewardsCharged, RewardsCredited
from tally.rewards.epochs import EpochClosed
from tally.rewards.merkle import payout_tree
from tally.rewards.tables import (
    AccrualLineRow,
    AccrualRow,
    BalanceRow,
    CreditAccountRow,
    CreditMoveRow,
    EpochRow,
    PayoutRow,
)

Move = tuple[int, dict[str, Any]]  # (seq, the credit move row it gives)


class RewardsAudit(Auditor):
    events = (RewardsAccrued, EpochClosed, RewardsCredited, RewardsCharged)
    tables = ("rewards_accruals", "rewards_accrual_lines", "rewards_epochs", "rewards_payouts", "rewards_balances",
              "rewards_credit_moves", "rewards_credit_accounts")  # fmt: skip

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.epoch_of: dict[str, int | None] = {}  # inference -> the epoch that paid its lines (None: not yet)
        self.pending: list[tuple[int, str]] = []  # (seq, inference) of accruals with lines no epoch has paid
        self.unpaid: dict[str, int] = defaultdict(int)  # account -> the pending accruals' total
        self.accrued: dict[str, int] = defaultdict(int)
        self.paid: dict[str, int] = defaultdict(int)
        self.last_seq: dict[str, int] = {}  # account -> the entry that last changed its balance
        self.credits: dict[str, dict[str, int]] = {}  # account -> balance, credited, charged
        self.credit_seq: dict[str, int] = {}
        self.moves: set[int] = set()  # seqs of credit and charge entries
        self.closed: set[int] = set()  # epoch numbers

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        accruals: list[tuple[int, RewardsAccrued]] = []
        moves: list[Move] = []
        for seq, _, event in batch:
            if isinstance(event, RewardsAccrued):
                self._accrue(seq, event)
                accruals.append((seq, event))
            elif isinstance(event, EpochClosed):  # the rows before it first, so the first divergence comes first
                divergence = self._accruals(session, accruals) or self._moves(session, moves)
                accruals, moves = [], []
                if divergence is None:
                    divergence = self._close(session, seq, event)
                if divergence is not None:
                    return divergence
            elif isinstance(event, RewardsCredited | RewardsCharged):
                move = self._move(seq, event)
                if isinstance(move, Divergence):
                    return move
                moves.append(move)
        return self._accruals(session, accruals) or self._moves(session, moves)

    # ---- accruals -------------------------------------------------------------------------------------------

    def _accrue(self, seq: int, event: RewardsAccrued) -> None:
        self.epoch_of[event.inference] = None
        if event.lines:
            self.pending.append((seq, event.inference))
        for line in event.lines:
            self.accrued[line.account] += int(line.amount)
            self.unpaid[line.account] += int(line.amount)
            self.last_seq[line.account] = seq

    def _accruals(self, session: Session, events: list[tuple[int, RewardsAccrued]]) -> Divergence | None:
        for part in chunks(events):
            ids = [event.inference for _, event in part]
            rows = {r["inference"]: r for r in session.execute(
                select(AccrualRow.__table__).where(AccrualRow.inference.in_(ids))
            ).mappings()}  # fmt: skip
            lines: dict[str, list[Any]] = defaultdict(list)
            query = (
                select(
                    AccrualLineRow.inference,
                    AccrualLineRow.account,
                    AccrualLineRow.role,
                    AccrualLineRow.share,
                    AccrualLineRow.amount,
                )
                .where(AccrualLineRow.inference.in_(ids))
                .order_by(AccrualLineRow.id)
            )
            for inference, *line in session.execute(query):
                lines[inference].append(line)
            for seq, event in part:
                expected = {
                    "model": event.model, "policy_hash": event.policy_hash, "prompt_tokens": event.prompt_tokens,
                    "completion_tokens": event.completion_tokens, "fee": event.fee, "ledger_seq": seq,
                }  # fmt: skip
                found = rows.get(event.inference)
                self.checked("rewards_accruals", int(found is not None))
                if (divergence := compare("rewards_accruals", event.inference, expected, found, seq)) is not None:
                    return divergence
                if (divergence := self._lines(seq, event, lines[event.inference])) is not None:
                    return divergence
        return None

    def _lines(self, seq: int, event: RewardsAccrued, found: list[Any]) -> Divergence | None:
        self.checked("rewards_accrual_lines", len(found))
        if len(found) != len(event.lines):
            return Divergence("rewards_accrual_lines", event.inference, "lines", len(event.lines), len(found), seq)
        for number, (line, (account, role, share, amount)) in enumerate(zip(event.lines, found, strict=True), 1):
            expected = {"account": line.account, "role": line.role, "share": line.share, "amount": line.amount}
            have = {"account": account, "role": role, "share": share, "amount": amount}
            key = f"{event.inference} line {number}"
            if (divergence := compare("rewards_accrual_lines", key, expected, have, seq)) is not None:
                return divergence
        return None

    # ---- epochs ---------------------------------------------------------------------------------------------

    def _close(self, session: Session, seq: int, event: EpochClosed) -> Divergence | None:
        """Pay the pending accruals the epoch covers; rebuild its tree and compare it with the entry and tables."""
        key = f"epoch {event.epoch}"
        self.closed.add(event.epoch)
        paid = [(s, inference) for s, inference in self.pending if s <= event.last_accrual_seq]
        later = [(s, inference) for s, inference in self.pending if s > event.last_accrual_seq]
        carried: dict[str, int] = defaultdict(int)
        for s, _ in later:  # accruals the epoch did not see: rare (written while it closed), so read again
            accrued = decode_entry(self.ledger.entry(s, session)).event()
            assert isinstance(accrued, RewardsAccrued)
            for line in accrued.lines:
                carried[line.account] += int(line.amount)
        amounts = {a: total - carried[a] for a, total in self.unpaid.items() if total - carried[a] > 0}
        tree = payout_tree(amounts) if amounts else None
        rebuilt = {
            "root": tree.root if tree else "(nothing to pay)", "total": str(sum(amounts.values())),
            "accounts": len(amounts), "accruals": len(paid),
        }  # fmt: skip
        for name, value in rebuilt.items():
            if getattr(event, name) != value:
                return Divergence("rewards_epochs", key, f"{name} in the rewards.epoch_closed entry", value,
                                  getattr(event, name), seq)  # fmt: skip
        row = session.execute(select(EpochRow.__table__).where(EpochRow.number == event.epoch)).mappings().first()
        self.checked("rewards_epochs", int(row is not None))
        if (divergence := compare("rewards_epochs", key, {**rebuilt, "ledger_seq": seq}, row, seq)) is not None:
            return divergence
        payouts: Expected = {
            p.account: ({"index": p.index, "amount": str(p.amount), "proof": list(p.proof)}, seq)
            for p in (tree.payouts if tree else ())
        }
        found = session.execute(
            select(PayoutRow.account, PayoutRow.index, PayoutRow.amount, PayoutRow.proof).where(
                PayoutRow.epoch == event.epoch
            )
        )
        rows = ((a, {"index": i, "amount": amount, "proof": proof}) for a, i, amount, proof in found)
        if (divergence := self.check_rows("rewards_payouts", rows, payouts, lambda a: f"{key} {a}")) is not None:
            return divergence
        for account, amount in amounts.items():
            self.paid[account] += amount
            self.last_seq[account] = seq
        for _, inference in paid:
            self.epoch_of[inference] = event.epoch
        self.pending, self.unpaid = later, defaultdict(int, {a: t for a, t in carried.items() if t})
        return None

    # ---- credits --------------------------------------------------------------------------------------------

    def _move(self, seq: int, event: RewardsCredited | RewardsCharged) -> Move | Divergence:
        account = self.credits.setdefault(event.account, {"balance": 0, "credited": 0, "charged": 0})
        self.credit_seq[event.account] = seq
        self.moves.add(seq)
        amount = int(event.amount)
        if isinstance(event, RewardsCredited):
            account["balance"] += amount
            account["credited"] += amount
            row = {"kind": "credit", "inference": None, "by": event.by}
        else:
            account["balance"] -= amount
            account["charged"] += amount
            row = {"kind": "charge", "inference": event.inference, "by": None}
        if event.balance != str(account["balance"]):
            what = f"balance in the {event.event_type} entry"
            return Divergence("rewards_credit_moves", f"entry {seq}", what, str(account["balance"]), event.balance, seq)
        return seq, {"account": event.account, **row, "amount": event.amount, "balance": event.balance}

    def _moves(self, session: Session, moves: list[Move]) -> Divergence | None:
        for part in chunks(moves):
            query = select(CreditMoveRow.__table__).where(CreditMoveRow.ledger_seq.in_([seq for seq, _ in part]))
            rows = {r["ledger_seq"]: r for r in session.execute(query).mappings()}
            for seq, expected in part:
                self.checked("rewards_credit_moves", int(seq in rows))
                if divergence := compare("rewards_credit_moves", f"entry {seq}", expected, rows.get(seq), seq):
                    return divergence
        return None

    # ---- after the last event -------------------------------------------------------------------------------

    def finish(self, session: Session) -> Divergence | None:
        for check in (self._extra_accruals, self._line_epochs, self._balances, self._extra_epochs, self._credits):
            if (divergence := check(session)) is not None:
                return divergence
        return None

    def _extra_accruals(self, session: Session) -> Divergence | None:
        total = session.execute(select(func.count()).select_from(AccrualRow)).scalar_one()
        if total > len(self.epoch_of):
            for (inference,) in session.execute(select(AccrualRow.inference).execution_options(yield_per=5000)):
                if inference not in self.epoch_of:
                    return extra_row("rewards_accruals", inference)
        return None

    def _line_epochs(self, session: Session) -> Divergence | None:
        """Every line: its accrual is in the ledger, and its epoch is the one that closed over that accrual."""
        query = select(AccrualLineRow.id, AccrualLineRow.inference, AccrualLineRow.epoch, AccrualRow.ledger_seq)
        query = query.join(AccrualRow, AccrualRow.inference == AccrualLineRow.inference, isouter=True)
        for line, inference, epoch, seq in session.execute(query.execution_options(yield_per=5000)):
            if inference not in self.epoch_of:
                return extra_row("rewards_accrual_lines", f"{inference} (line id {line})")
            if epoch != self.epoch_of[inference]:
                return Divergence("rewards_accrual_lines", f"{inference} (line id {line})", "epoch",
                                  self.epoch_of[inference], epoch, seq)  # fmt: skip
        return None

    def _balances(self, session: Session) -> Divergence | None:
        expected: Expected = {
            a: ({"accrued": str(self.accrued[a]), "paid": str(self.paid[a])}, seq) for a, seq in self.last_seq.items()
        }
        found = session.execute(select(BalanceRow.account, BalanceRow.accrued, BalanceRow.paid))
        rows = ((a, {"accrued": accrued, "paid": paid}) for a, accrued, paid in found)
        return self.check_rows("rewards_balances", rows, expected)

    def _extra_epochs(self, session: Session) -> Divergence | None:
        for (number,) in session.execute(select(EpochRow.number).order_by(EpochRow.number)):
            if number not in self.closed:
                return extra_row("rewards_epochs", f"epoch {number}")
        total = session.execute(select(func.count()).select_from(PayoutRow)).scalar_one()
        if total > self.rows["rewards_payouts"]:  # the payouts of closed epochs were compared as they closed
            for number, account in session.execute(select(PayoutRow.epoch, PayoutRow.account)):
                if number not in self.closed:
                    return extra_row("rewards_payouts", f"epoch {number} {account}")
        return None

    def _credits(self, session: Session) -> Divergence | None:
        total = session.execute(select(func.count()).select_from(CreditMoveRow)).scalar_one()
        if total > len(self.moves):
            for move_id, seq in session.execute(select(CreditMoveRow.id, CreditMoveRow.ledger_seq)):
                if seq not in self.moves:
                    return extra_row("rewards_credit_moves", f"id {move_id} (entry {seq})")
        expected: Expected = {
            a: ({k: str(v) for k, v in totals.items()}, self.credit_seq[a]) for a, totals in self.credits.items()
        }
        account = CreditAccountRow
        found = session.execute(select(account.account, account.balance, account.credited, account.charged))
        rows = ((a, {"balance": b, "credited": c, "charged": d}) for a, b, c, d in found)
        return self.check_rows("rewards_credit_accounts", rows, expected)
