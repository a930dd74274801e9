"""Rewards errors. Each message is written for the person who has to act on it: it names the file, the field,
the inference or the epoch concerned."""

from __future__ import annotations


class RewardsError(ValueError):
    """A rewards request cannot be carried out as asked."""


class PolicyError(RewardsError):
    """The fee policy file is missing, not YAML, or invalid (the message names the file, line and field)."""


class DuplicateAccrualError(RewardsError):
    """An inference's fee was already accrued; a fee is accrued once."""


class NothingToPayError(RewardsError):
    """An epoch was asked to close with no unpaid amounts."""


class RewardsNotFoundError(RewardsError, LookupError):
    """No such epoch, or no payout for an account in it."""
