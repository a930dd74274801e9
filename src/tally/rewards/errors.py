"""Rewards errors. Each message is written for the person who has to act on it: it names the file, the field,
the inference or the epoch concerned. Each class has a kind from the one taxonomy (`tally.config.errors`)."""

from __future__ import annotations

from tally.config.errors import TallyError


class RewardsError(TallyError, ValueError):
    """A rewards request cannot be carried out as asked."""


class PolicyError(RewardsError):
    """The fee policy file is missing, not YAML, or invalid (the message names the file, line and field). The
    file is the server's configuration, so a caller cannot fix it: internal."""

    kind = "internal"


class DuplicateAccrualError(RewardsError):
    """An inference's fee was already accrued; a fee is accrued once."""

    kind = "conflict"


class NothingToPayError(RewardsError):
    """An epoch was asked to close with no unpaid amounts."""

    kind = "conflict"


class RewardsNotFoundError(RewardsError, LookupError):
    """No such epoch, or no payout for an account in it."""

    kind = "not_found"


class InsufficientCreditError(RewardsError):
    """A requester's credit does not cover the most an answer can cost (values: balance, needed, window)."""

    kind = "limit"
