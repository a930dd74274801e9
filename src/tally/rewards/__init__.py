"""Rewards: a fee policy prices each attributed answer and splits its fee between the data contributors (by
attribution share), the adapter developer, the platform and a reserve; accruals are ledger events; an epoch
closes the unpaid amounts into a payout Merkle tree that contributors claim against on chain. See docs/rewards.md.

Names are loaded on first use, so `tally.rewards.errors` (which the CLI maps to messages) imports neither
eth-utils nor eth-abi. `statement` is imported at once: as a lazy name it would be shadowed by its own module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tally.config.lazy import lazy_exports
from tally.rewards.statement import (
    Balance,
    Credit,
    CreditMove,
    Payout,
    Statement,
    StatementItem,
    balance_of,
    balances,
    credit_of,
    payouts_of,
    statement,
    statement_page,
)

if TYPE_CHECKING:
    from tally.rewards.accrual import Accrual, AccruedLine, RewardsAccrued, accrue
    from tally.rewards.credits import RewardsCharged, RewardsCredited, add_credit, max_cost, require_credit
    from tally.rewards.epochs import Epoch, EpochClosed, PayoutProof, close_epoch, get_epoch, list_epochs, payout_proof
    from tally.rewards.errors import (
        DuplicateAccrualError,
        InsufficientCreditError,
        NothingToPayError,
        PolicyError,
        RewardsError,
        RewardsNotFoundError,
    )
    from tally.rewards.merkle import leaf_hash, payout_tree, verify_payout
    from tally.rewards.policy import DEFAULT_POLICY, FeePolicy, effective_policy, load_policy, parse_policy
    from tally.rewards.split import Line, compute_fee, largest_remainder, split_fee

_WHERE = {
    "Accrual": "accrual",
    "AccruedLine": "accrual",
    "DEFAULT_POLICY": "policy",
    "DuplicateAccrualError": "errors",
    "Epoch": "epochs",
    "EpochClosed": "epochs",
    "FeePolicy": "policy",
    "InsufficientCreditError": "errors",
    "Line": "split",
    "NothingToPayError": "errors",
    "PayoutProof": "epochs",
    "PolicyError": "errors",
    "RewardsAccrued": "accrual",
    "RewardsCharged": "credits",
    "RewardsCredited": "credits",
    "RewardsError": "errors",
    "RewardsNotFoundError": "errors",
    "accrue": "accrual",
    "add_credit": "credits",
    "close_epoch": "epochs",
    "compute_fee": "split",
    "effective_policy": "policy",
    "get_epoch": "epochs",
    "largest_remainder": "split",
    "leaf_hash": "merkle",
    "list_epochs": "epochs",
    "load_policy": "policy",
    "max_cost": "credits",
    "parse_policy": "policy",
    "payout_proof": "epochs",
    "payout_tree": "merkle",
    "require_credit": "credits",
    "split_fee": "split",
    "verify_payout": "merkle",
}


__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "DEFAULT_POLICY",
    "Accrual",
    "AccruedLine",
    "Balance",
    "Credit",
    "CreditMove",
    "DuplicateAccrualError",
    "Epoch",
    "EpochClosed",
    "FeePolicy",
    "InsufficientCreditError",
    "Line",
    "NothingToPayError",
    "Payout",
    "PayoutProof",
    "PolicyError",
    "RewardsAccrued",
    "RewardsCharged",
    "RewardsCredited",
    "RewardsError",
    "RewardsNotFoundError",
    "Statement",
    "StatementItem",
    "accrue",
    "add_credit",
    "balance_of",
    "balances",
    "close_epoch",
    "compute_fee",
    "credit_of",
    "effective_policy",
    "get_epoch",
    "largest_remainder",
    "leaf_hash",
    "list_epochs",
    "load_policy",
    "max_cost",
    "parse_policy",
    "payout_proof",
    "payout_tree",
    "payouts_of",
    "require_credit",
    "split_fee",
    "statement",
    "statement_page",
    "verify_payout",
]
