"""Rewards: a fee policy prices each attributed answer and splits its fee between the data contributors (by
attribution share), the adapter developer, the platform and a reserve; accruals are ledger events; an epoch
closes the unpaid amounts into a payout Merkle tree that contributors claim against on chain. See docs/rewards.md.
"""

from tally.rewards.accrual import Accrual, AccruedLine, RewardsAccrued, accrue
from tally.rewards.epochs import (
    Epoch,
    EpochClosed,
    PayoutProof,
    close_epoch,
    get_epoch,
    list_epochs,
    payout_proof,
)
from tally.rewards.errors import (
    DuplicateAccrualError,
    NothingToPayError,
    PolicyError,
    RewardsError,
    RewardsNotFoundError,
)
from tally.rewards.merkle import leaf_hash, payout_tree, verify_payout
from tally.rewards.policy import DEFAULT_POLICY, FeePolicy, effective_policy, load_policy, parse_policy
from tally.rewards.split import Line, compute_fee, largest_remainder, split_fee
from tally.rewards.statement import Balance, Statement, StatementItem, balances, statement

__all__ = [
    "DEFAULT_POLICY",
    "Accrual",
    "AccruedLine",
    "Balance",
    "DuplicateAccrualError",
    "Epoch",
    "EpochClosed",
    "FeePolicy",
    "Line",
    "NothingToPayError",
    "PayoutProof",
    "PolicyError",
    "RewardsAccrued",
    "RewardsError",
    "RewardsNotFoundError",
    "Statement",
    "StatementItem",
    "accrue",
    "balances",
    "close_epoch",
    "compute_fee",
    "effective_policy",
    "get_epoch",
    "largest_remainder",
    "leaf_hash",
    "list_epochs",
    "load_policy",
    "parse_policy",
    "payout_proof",
    "payout_tree",
    "split_fee",
    "statement",
    "verify_payout",
]
