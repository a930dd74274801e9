"""Errors in the OpenAI shape: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from tally.config.errors import TallyError
from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.identity import AccountError, AuthError
from tally.rewards.errors import NothingToPayError, PolicyError, RewardsError, RewardsNotFoundError


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error", param: str | None = None):
        self.status, self.message, self.type, self.param = status, message, type_, param


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, object]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# kind -> (HTTP status, OpenAI error type): the one mapping of the taxonomy to HTTP
KIND_HTTP: dict[str, tuple[int, str]] = {
    "invalid": (400, "invalid_request_error"),
    "unauthenticated": (401, "authentication_error"),
    "forbidden": (403, "permission_error"),
    "not_found": (404, "not_found_error"),
    "conflict": (409, "invalid_request_error"),
    "limit": (429, "rate_limit_error"),
    "unavailable": (503, "server_error"),
    "internal": (500, "server_error"),
}


def http_error(exc: TallyError) -> tuple[int, dict[str, object]]:
    """The status and OpenAI error body of a package's error (also sent as an SSE event once a stream started)."""
    status, type_ = KIND_HTTP[exc.kind]
    return status, error_body(exc.message, type_, exc.param)


def install(app: FastAPI) -> None:
    @app.exception_handler(TallyError)
    async def _tally_error(_: Request, exc: TallyError) -> JSONResponse:
        status, body = http_error(exc)
        return JSONResponse(body, status_code=status)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.type, exc.param), status_code=exc.status)

    def _raise_as(status: int, type_: str):
        async def handler(_: Request, exc: Exception) -> JSONResponse:
            return JSONResponse(error_body(str(exc), type_), status_code=status)

        return handler

    # Service errors carry messages written for the user; the status says whose fault it is.
    app.add_exception_handler(DatanetError, _raise_as(400, "invalid_request_error"))
    app.add_exception_handler(AccountError, _raise_as(400, "invalid_request_error"))
    app.add_exception_handler(NotFoundError, _raise_as(404, "not_found_error"))
    app.add_exception_handler(ForbiddenError, _raise_as(403, "permission_error"))
    app.add_exception_handler(AuthError, _raise_as(401, "authentication_error"))
    app.add_exception_handler(RewardsError, _raise_as(400, "invalid_request_error"))
    app.add_exception_handler(RewardsNotFoundError, _raise_as(404, "not_found_error"))
    app.add_exception_handler(NothingToPayError, _raise_as(409, "invalid_request_error"))
    app.add_exception_handler(PolicyError, _raise_as(500, "server_error"))  # the server's fee policy file is bad

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path"))
        return JSONResponse(
            error_body(f"{where}: {first.get('msg')}", "invalid_request_error", where or None), status_code=400
        )

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), kind), status_code=exc.status_code)
