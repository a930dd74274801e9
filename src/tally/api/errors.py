"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}.

Every package error is a `TallyError`; its kind becomes the status and the OpenAI error type here, once (the table
is in docs/errors.md). `param` names the request field at fault; `code` is the error's stable reason code where it
has one (ledger proofs and receipts), else null. `ApiError` is for faults that exist only in HTTP (a missing header,
an unknown route action).
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tally.config.errors import ErrorKind, TallyError

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None):
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# kind -> (HTTP status, OpenAI error type): the one mapping of the taxonomy to HTTP
KIND_HTTP: dict[ErrorKind, tuple[int, str]] = {
    "invalid": (400, "invalid_request_error"),
    "unauthenticated": (401, "authentication_error"),
    "forbidden": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "conflict": (409, "invalid_request_error"),  # OpenAI has no conflict type; clients branch on the status
    "limit": (429, "rate_limit_error"),  # a quota over a time window (values carry `window`)
    "unavailable": (503, "server_error"),
    "internal": (500, "server_error"),
}
# A limit without a time window is a size or count: waiting does not help, a smaller request does.
SIZE_LIMIT_HTTP: tuple[int, str] = (413, "invalid_request_error")


def http_status(exc: TallyError) -> tuple[int, str]:
    """The HTTP status and OpenAI error type of a package's error."""
    if exc.kind == "limit" and "window" not in exc.values:
        return SIZE_LIMIT_HTTP
    return KIND_HTTP[exc.kind]


def http_error(exc: TallyError) -> tuple[int, dict[str, object]]:
    """The status and OpenAI error body of a package's error (also sent as an SSE event once a stream started). An
    upload refused for its lines also carries `problems`: each bad line's file, line, field, problem and expected."""
    status, type_ = http_status(exc)
    reason = getattr(exc, "reason", None)
    body = error_body(exc.message, type_, exc.param, reason if isinstance(reason, str) else None)
    problems = exc.values.get("problems")
    if isinstance(problems, list):
        body["error"]["problems"] = problems  # type: ignore[index]
    return status, body


def retry_after(exc: TallyError) -> dict[str, str] | None:
    """`Retry-After` (whole seconds) for an error that says when to come back (a rate limit, a full queue)."""
    wait = exc.values.get("retry_after")
    return {"Retry-After": str(max(1, math.ceil(wait)))} if isinstance(wait, int | float) else None


def install(app: FastAPI) -> None:
    @app.exception_handler(TallyError)
    async def _tally_error(request: Request, exc: TallyError) -> JSONResponse:
        status, body = http_error(exc)
        if exc.kind == "internal":  # the server's fault: the operator needs the traceback, the caller gets the message
            log.error("%s %s: %s error: %s", request.method, request.url.path, exc.kind, exc.message, exc_info=exc)
        return JSONResponse(body, status_code=status, headers=retry_after(exc))

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(
            error_body(f"{where}: {first.get('msg')}", "invalid_request_error", where or None), status_code=400
        )

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> JSONResponse:
        # A number too large for the database or a tensor; the request models bound the ones they name, this
        # catches the rest (a path id, a query offset) so that no number is ever a 500.
        log.info("%s %s: number out of range: %s", request.method, request.url.path, exc)
        return JSONResponse(
            error_body(f"a number in the request is out of range ({exc})", "invalid_request_error"), 400
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)
