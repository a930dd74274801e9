"""One log line per request at INFO: method, route, status, latency, and what the answer path noted (model,
tokens, attribution). Every line of the request carries its id (`X-Request-Id` from the client, else a new one),
which is also sent back in the response header."""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.config.logs import REQUEST_FIELDS, REQUEST_ID

logger = logging.getLogger("tally.api.requests")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")  # a client's id is echoed only if it is this plain


class RequestLogMiddleware:
    """Pure ASGI (not BaseHTTPMiddleware), so streamed responses pass through untouched and the line is written
    when the last byte has been sent."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _CLIENT_ID.match(sent) else f"req-{uuid.uuid4().hex[:16]}"
        fields: dict[str, Any] = {}
        id_token, fields_token = REQUEST_ID.set(request_id), REQUEST_FIELDS.set(fields)
        status, start, logged = 500, time.perf_counter(), False

        def log() -> None:
            nonlocal logged
            if logged:
                return
            logged = True
            ms = round((time.perf_counter() - start) * 1000, 1)
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            logger.info(
                "%s %s %d %.1fms%s", scope["method"], scope["path"], status, ms, f" {extra}" if extra else "",
                extra={"method": scope["method"], "route": scope["path"], "status": status, "ms": ms, **fields},
            )  # fmt: skip

        async def send_logged(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                log()

        try:
            await self.app(scope, receive, send_logged)
        except Exception:
            logger.exception("unhandled error in %s %s", scope["method"], scope["path"])
            raise
        finally:
            log()
            REQUEST_ID.reset(id_token)
            REQUEST_FIELDS.reset(fields_token)
