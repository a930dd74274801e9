"""The studio's ASGI app, mounted by the API app at /studio: routers, static files, headers, error pages."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

import tally
from tally.answers import Runtime
from tally.config.errors import TallyError
from tally.studio import pages
from tally.studio.pages import KIND_TITLE, SignInNeeded, Studio, error_page, page, status_of
from tally.studio.session import COOKIE, load_or_create_secret

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# npm packages whose files the studio serves under /studio/vendor/<package>/...; pinned in package.json.
VENDOR_PACKAGES = ("htmx.org", "@picocss/pico")
VENDOR_SUFFIXES = (".js", ".mjs", ".css", ".map", ".woff2", ".svg")
OWN_STATIC_SUFFIXES = (".js", ".css", ".svg", ".png", ".ico")

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def default_vendor_dir() -> Path:
    """node_modules of the checkout the package runs from (src layout: three levels above this package)."""
    return Path(tally.__file__).resolve().parents[2] / "node_modules"


def create_studio(parent: FastAPI, routers: list[APIRouter]) -> FastAPI:
    """The studio app; `parent` is the API app (its runtime is the studio's)."""
    app = FastAPI(title="Tally Studio", docs_url=None, redoc_url=None, openapi_url=None)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.globals["url"] = pages.url
    templates.env.globals["version"] = tally.__version__
    app.state.studio = Studio(templates)
    app.state.parent = parent
    for router in [static_router(), *routers]:
        app.include_router(router, dependencies=[Depends(pages.check_csrf)])
    _install_errors(app)

    @app.middleware("http")
    async def _headers(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        runtime: Runtime | None = getattr(parent.state, "runtime", None)
        if runtime is None or not runtime.settings.studio.enabled:
            return Response("the studio is turned off (studio.enabled)", status_code=404, media_type="text/plain")
        response = await call_next(request)
        cookie = getattr(request.state, "studio_cookie", None)
        if cookie is not None:
            settings = runtime.settings.studio
            response.set_cookie(
                COOKIE, cookie, max_age=int(settings.session_hours * 3600), path=pages.base_path(request) or "/",
                secure=settings.cookie_secure, httponly=True, samesite="strict",
            )  # fmt: skip
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.media_type == "text/html" or response.headers.get("content-type", "").startswith("text/html"):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    return app


def start(app: FastAPI, runtime: Runtime) -> None:
    """At the app's start: the session secret from the data directory."""
    studio: Studio = app.state.studio
    studio.secret = load_or_create_secret(runtime.settings.keys_dir)


def static_router() -> APIRouter:
    router = APIRouter()

    @router.get("/static/{name:path}")
    def own_static(name: str, _: pages.View = Depends(page("anonymous"))) -> Response:
        return _file(HERE / "static", name, OWN_STATIC_SUFFIXES)

    @router.get("/vendor/{package:path}")
    def vendor(request: Request, package: str, _: pages.View = Depends(page("anonymous"))) -> Response:
        """A file of a pinned front-end package: /vendor/htmx.org/dist/htmx.min.js."""
        settings = pages.runtime_of(request).settings.studio
        root = settings.vendor_dir or default_vendor_dir()
        for name in VENDOR_PACKAGES:
            if package.startswith(name + "/"):
                return _file(root / name, package[len(name) + 1 :], VENDOR_SUFFIXES)
        raise HTTPException(404, f"no front-end package serves {package!r}")

    return router


def _file(root: Path, name: str, suffixes: tuple[str, ...]) -> Response:
    base = root.resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or path.suffix not in suffixes or not path.is_file():
        raise HTTPException(404, f"no file {name!r}")
    return FileResponse(path, headers={"Cache-Control": "public, max-age=3600"})


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(SignInNeeded)
    async def _sign_in(request: Request, _: SignInNeeded) -> Response:
        return pages.sign_in_redirect(request)

    @app.exception_handler(TallyError)
    async def _tally_error(request: Request, exc: TallyError) -> Response:
        status = status_of(exc)
        if exc.kind == "internal":
            log.error("%s %s: internal error: %s", request.method, request.url.path, exc.message, exc_info=exc)
        return error_page(request, status, KIND_TITLE[exc.kind], exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        first_field = None
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
            first_field = first_field or where
            problems.append(f"{where}: {error.get('msg')}")
        return error_page(request, 400, KIND_TITLE["invalid"], "; ".join(problems), first_field)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        title = "Not found" if exc.status_code == 404 else "Request refused"
        return error_page(request, exc.status_code, title, str(exc.detail))

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> Response:
        return error_page(request, 400, KIND_TITLE["invalid"], f"a number in the request is out of range ({exc})")
