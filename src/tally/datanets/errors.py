"""Datanet errors; the API maps them to 400, 403 and 404."""


class DatanetError(ValueError):
    """The request is invalid: the message names the field or line and what was expected."""


class NotFoundError(LookupError):
    """No such datanet, contribution, snapshot or request (or the caller may not know it exists)."""


class ForbiddenError(PermissionError):
    """The caller is known but may not do this; the message says which role or grant is missing."""
