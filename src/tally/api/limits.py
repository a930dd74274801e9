"""Limits applied before a route runs: the per-caller request rate (429) and the request body size (413).

Pure ASGI, so a refusal costs no parsing: a body whose `Content-Length` is over the cap is refused from the headers
alone, and a body sent without a length (chunked) is counted as it arrives and refused at the cap. The caps:

- every route: `server.max_request_bytes`;
- the datanet upload routes (the API's and the studio's upload form): max(`server.max_request_bytes`,
  `datanets.max_upload_bytes`) + `MULTIPART_OVERHEAD` (the form's boundaries and small fields). A datanet may set a
  lower per-upload cap, never a higher one; its own cap is checked on the received file before it is read into
  memory.

Rates: one token bucket per caller (`tally.answers.ratelimit`): the SHA-256 of the bearer token when one is sent
(no database read: a made-up token gets a bucket of its own, then fails authentication), else the client's IP.
`/health` and `/metrics` are exempt, so probes and scrapers never see a 429. A refused caller's 429 is held back
for part of the wait it names (docs/security.md#limits), so a client that ignores `Retry-After` cannot make the
server answer thousands of refusals a second.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import re

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api.auth import bearer_token
from tally.api.errors import http_error, retry_after
from tally.config import Settings
from tally.config.errors import TallyError

INT64_MAX = 2**63 - 1  # the database's INTEGER: a larger number in a request is refused as invalid
MULTIPART_OVERHEAD = 64 * 1024  # boundaries, part headers and the upload form's small fields
# the API's upload route, and the studio's upload form and its signing step (tally.studio.datanet_pages)
UPLOAD_PATH = re.compile(r"^(?:/v1/datanets/[^/]+/contributions|/studio/datanets/[^/]+/contribute(?:/prepare)?)$")
UNLIMITED_PATHS = frozenset({"/health", "/metrics"})


class LimitError(TallyError):
    kind = "limit"


def body_cap(settings: Settings, path: str) -> int:
    """The largest body a request to `path` may send."""
    cap = settings.server.max_request_bytes
    if UPLOAD_PATH.match(path):
        return max(cap, settings.datanets.max_upload_bytes) + MULTIPART_OVERHEAD
    return cap


def _route_path(scope: Scope) -> str:
    """The request's path without the prefix a reverse proxy serves it under (ASGI's root_path)."""
    path, root = str(scope["path"]), str(scope.get("root_path") or "")
    return path[len(root) :] if root and path.startswith(root + "/") else path


def upload_ceiling(settings: Settings) -> int:
    """The largest per-upload cap a datanet may set: what the upload route's body cap leaves for the file."""
    return body_cap(settings, "/v1/datanets/_/contributions") - MULTIPART_OVERHEAD


def caller(scope: Scope) -> str:
    """Whose bucket a request takes from: its key's hash, else its client's address."""
    token = bearer_token(Request(scope))
    if token is not None:
        return "key:" + hashlib.sha256(token.encode()).hexdigest()[:32]
    client = scope.get("client")
    return f"ip:{client[0] if client else 'unknown'}"


async def _refuse(send: Send, exc: TallyError, *, close: bool = False) -> None:
    status, body = http_error(exc)
    headers = [(b"content-type", b"application/json")]
    headers += [(k.lower().encode(), v.encode()) for k, v in (retry_after(exc) or {}).items()]
    if close:  # the unread body is not drained: the connection ends with the response
        headers.append((b"connection", b"close"))
    payload = json.dumps(body).encode()
    headers.append((b"content-length", str(len(payload)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class _TooLarge(Exception):
    pass


class LimitsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = getattr(scope["app"].state, "runtime", None) if scope["type"] == "http" else None
        if runtime is None or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        limiter = runtime.rate_limiter
        wait = limiter.acquire(caller(scope))
        if wait > 0:
            if limiter.held < limiter.max_held:
                # A client that ignores Retry-After gets its 429 only after that wait: each of its connections then
                # costs the server about one request a second instead of thousands, which would starve others. The
                # jitter spreads a flood's connections over the second instead of waking them all at once.
                limiter.held += 1
                try:
                    await asyncio.sleep(min(math.ceil(wait), limiter.max_hold_s) * random.uniform(0.5, 1.0))
                finally:
                    limiter.held -= 1
            await _refuse(
                send,
                LimitError(
                    f"rate limit: {limiter.per_minute} requests per minute (burst {limiter.burst}); retry in "
                    f"{wait:.1f} s", window="minute", limit=limiter.per_minute, retry_after=wait,
                ),
            )  # fmt: skip
            return
        cap = body_cap(runtime.settings, _route_path(scope))
        too_large = LimitError(f"the request body is over the limit of {cap} bytes", max_bytes=cap)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > cap):
            await _refuse(send, too_large, close=True)
            return
        received, over, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    over = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if over:  # the route's answer to the cut-off body (a parse error) is replaced by the 413
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await _refuse(send, too_large, close=True)
