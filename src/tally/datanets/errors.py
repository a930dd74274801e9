"""Datanet errors, each with a kind from the one taxonomy (`tally.config.errors`); the API and CLI map kinds once."""

from tally.config.errors import TallyError


class DatanetError(TallyError, ValueError):
    """The request is invalid: the message names the field or line and what was expected. A duplicate or a decided
    request is raised with kind="conflict", a configured limit with kind="limit"."""


class NotFoundError(TallyError, LookupError):
    """No such datanet, contribution, snapshot or request (or the caller may not know it exists)."""

    kind = "not_found"


class ForbiddenError(TallyError, PermissionError):
    """The caller is known but may not do this; the message says which role or grant is missing."""

    kind = "forbidden"
