"""Bearer API keys: `Authorization: Bearer tly_...`, read into the caller. Who may call each route is declared
beside it with `tally.api.policy.allow`, which decides with these."""

from __future__ import annotations

from fastapi import Depends, Request

from tally.answers import Runtime
from tally.api.errors import ApiError
from tally.api.state import app_state
from tally.identity import AuthError, Principal, authenticate


def bearer_token(request: Request) -> str | None:
    """The key in the Authorization header, or None when there is none."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _authenticate(state: Runtime, token: str) -> Principal:
    try:
        with state.store.read() as session:
            return authenticate(session, token)
    except AuthError as exc:
        raise ApiError(401, str(exc), type_="authentication_error") from None


def principal(request: Request, state: Runtime = Depends(app_state)) -> Principal:
    """The caller; a route that depends on this needs a valid key."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "missing API key: send `Authorization: Bearer tly_...`", type_="authentication_error")
    return _authenticate(state, token)


def optional_principal(request: Request, state: Runtime = Depends(app_state)) -> Principal | None:
    """The caller when a valid key is sent, else None (anonymous). OpenAI clients must send some key, and local
    setups send a placeholder ("unused", "EMPTY"), so a key that does not authenticate is anonymous here; what needs
    a caller (retrieval) refuses an anonymous request itself."""
    token = bearer_token(request)
    if token is None:
        return None
    try:
        return _authenticate(state, token)
    except ApiError:
        _anonymous_bucket(request, state)
        return None


def _anonymous_bucket(request: Request, state: Runtime) -> None:
    """A key that does not authenticate buys no rate bucket of its own (the limiter buckets by the key's hash before
    it is checked): the request also takes from its address's bucket, as an anonymous one does."""
    from tally.config.errors import TallyError

    if getattr(request.state, "anonymous_bucket", False):  # once per request, however many dependencies ask
        return
    request.state.anonymous_bucket = True
    address = request.client.host if request.client else "unknown"
    wait = state.rate_limiter.acquire(f"ip:{address}")
    if wait > 0:
        raise TallyError(
            f"rate limit: {state.rate_limiter.per_minute} requests per minute for anonymous callers; retry in "
            f"{wait:.1f} s", kind="limit", window="minute", retry_after=wait,
        )  # fmt: skip
