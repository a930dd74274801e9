"""Bearer API keys on every protected route: `Authorization: Bearer tly_...`."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Depends, Request

from tally.api.errors import ApiError
from tally.api.state import AppState, app_state
from tally.identity import AuthError, Principal, authenticate


def principal(request: Request, state: AppState = Depends(app_state)) -> Principal:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send `Authorization: Bearer tly_...`", type_="authentication_error")
    try:
        with state.store.read() as session:
            return authenticate(session, token.strip())
    except AuthError as exc:
        raise ApiError(401, str(exc), type_="authentication_error") from None


def require(*roles: str) -> Callable[..., Principal]:
    """A dependency: the caller's key must hold one of `roles` (admin holds all)."""

    def check(who: Principal = Depends(principal)) -> Principal:
        if not who.has(*roles):
            raise ApiError(
                403,
                f"this needs the {' or '.join(roles)} role; your key has {', '.join(sorted(who.roles))}",
                type_="permission_error",
            )
        return who

    return check
