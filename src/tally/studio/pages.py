"""What every studio page uses: the signed-in caller and the access rule (`page`), the CSRF check, rendering and
redirects, and the error page.

A page declares its rule as the API's routes do, with the one policy (`tally.answers.policy`):

    @router.get("/datanets/{slug}/review")
    def review(request: Request, view: View = Depends(page("datanet_owner"))) -> Response:
        return render(request, view, "datanets/review.html", rows=...)

A visitor who is not signed in is sent to the sign-in page (and back after); a signed-in caller the rule turns away
gets the error page with the policy's message and its status (403, or 404 where existence must not leak).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from tally.answers import Declared, RuleName, Runtime, decide, make_rule, needs_caller
from tally.config.errors import ErrorKind, TallyError
from tally.identity import AuthError, Principal, principal_of_key
from tally.studio.session import COOKIE, BrowserSession, same_token

log = logging.getLogger(__name__)

CSRF_FIELD = "csrf"
CSRF_HEADER = "x-csrf-token"

# kind -> HTTP status of the error page: the studio's one mapping of the error taxonomy
KIND_STATUS: dict[ErrorKind, int] = {
    "invalid": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "limit": 429,
    "unavailable": 503,
    "internal": 500,
}
KIND_TITLE: dict[ErrorKind, str] = {
    "invalid": "That input was not accepted",
    "unauthenticated": "Sign in needed",
    "forbidden": "Not allowed",
    "not_found": "Not found",
    "conflict": "Not possible now",
    "limit": "Over a limit",
    "unavailable": "Not available",
    "internal": "Server error",
}


def status_of(exc: TallyError) -> int:
    """The page's status: a limit without a time window is a size (413), as in the API."""
    if exc.kind == "limit" and "window" not in exc.values:
        return 413
    return KIND_STATUS[exc.kind]


@dataclass
class Studio:
    """What the studio holds while the app runs: the templates and the session secret (made at start)."""

    templates: Jinja2Templates
    secret: bytes = field(default=b"", repr=False)


class CsrfError(TallyError):
    kind = "forbidden"


class SignInNeeded(Exception):
    """Raised by a page that needs a caller when nobody is signed in: the studio redirects to the sign-in page."""


@dataclass
class View:
    """One request's view of the studio: the runtime, the caller (None: anonymous) and its session."""

    runtime: Runtime
    studio: Studio
    who: Principal | None
    session: BrowserSession

    @property
    def csrf(self) -> str:
        return self.session.csrf_token(self.studio.secret)

    @property
    def page_size(self) -> int:
        return self.runtime.settings.studio.page_size


def studio_of(request: Request) -> Studio:
    studio: Studio = request.app.state.studio
    return studio


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.parent.state.runtime
    return runtime


def base_path(request: Request) -> str:
    """The studio's path as the browser sees it: the proxy's root path (server.root_path) + /studio."""
    return str(request.scope.get("root_path", "")).rstrip("/")


def view_of(request: Request) -> View:
    """The request's view, read once per request (the cookie checked, the key re-read)."""
    cached = getattr(request.state, "studio_view", None)
    if isinstance(cached, View):
        return cached
    runtime, studio = runtime_of(request), studio_of(request)
    max_age = runtime.settings.studio.session_hours * 3600
    raw = request.cookies.get(COOKIE)
    session = BrowserSession.decode(studio.secret, raw, max_age) if raw else None
    who = None
    if session is not None and session.key_id is not None:
        try:
            with runtime.store.read() as s:
                who = principal_of_key(s, session.key_id)
        except AuthError:
            session = None  # the key was revoked or expired: the session ends with it
    if session is None:
        session = BrowserSession.new()
        set_session(request, session)
    view = View(runtime, studio, who, session)
    request.state.studio_view = view
    return view


def set_session(request: Request, session: BrowserSession | None) -> None:
    """Send this session's cookie with the response (None: a new anonymous session, after sign-out)."""
    studio = studio_of(request)
    request.state.studio_cookie = (session or BrowserSession.new()).encode(studio.secret)
    request.state.studio_view = None


class Page(Declared):
    """The dependency a studio page declares: the caller, checked against the page's rule."""

    def __call__(self, request: Request) -> View:
        view = view_of(request)
        if view.who is None and needs_caller(view.runtime, self.rule):
            raise SignInNeeded()
        decide(view.runtime, self.rule, view.who, request.path_params)
        return view


def page(name: RuleName, *roles: str) -> Page:
    """The rule of one page: `page("key")`, `page("datanet_owner")`, `page("role", "owner")`, ..."""
    return Page(make_rule(name, *roles))


async def check_csrf(request: Request) -> None:
    """Every unsafe request to the studio carries its session's CSRF token (form field `csrf` or header
    `X-CSRF-Token`); anything else is refused with 403 before the page runs."""
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    view = view_of(request)
    given = request.headers.get(CSRF_HEADER)
    if given is None and "form" in request.headers.get("content-type", ""):
        value = (await request.form()).get(CSRF_FIELD)
        given = value if isinstance(value, str) else None
    if not same_token(view.csrf, given):
        raise CsrfError(
            "the form's security token is missing or does not match your session (it may be from before you signed "
            "in or out); reload the page and submit again",
            param=CSRF_FIELD,
        )


def url(request: Request, path: str = "/") -> str:
    """A studio URL for `path` (starting with /), under the root path."""
    return base_path(request) + path


FLASH = re.compile(r"^[\w #.,()'/:-]{1,160}$")


def render(request: Request, view: View, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from `template` with `view` and `context`. A short notice after a redirect comes in the query
    (`?done=...`), shown only when it is plain words."""
    done = request.query_params.get("done")
    if done and FLASH.match(done):
        context.setdefault("flash", done)
    templates = view.studio.templates
    return templates.TemplateResponse(request, template, {"view": view, **context}, status_code=status)


def redirect(request: Request, path: str) -> RedirectResponse:
    """303 to a studio path (after a POST, the browser GETs it)."""
    return RedirectResponse(url(request, path), status_code=303)


def safe_next(value: str | None) -> str:
    """A studio path to go back to after sign-in: only a local path, never another site."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


def sign_in_redirect(request: Request) -> Response:
    here = request.url.path
    root = base_path(request)
    if here.startswith(root):
        here = here[len(root) :] or "/"
    if request.url.query:
        here += "?" + request.url.query
    return redirect(request, "/sign-in?next=" + quote(here, safe="/"))


def error_page(request: Request, status: int, title: str, message: str, param: str | None = None) -> Response:
    """The error page: the message, the field at fault if any, and a way back."""
    try:
        view = view_of(request)
    except Exception:  # the runtime itself failed: fall back to plain text
        log.exception("studio error page without a runtime")
        return Response(f"{title}: {message}", status_code=status, media_type="text/plain")
    template = "error_fragment.html" if request.headers.get("hx-request") == "true" else "error.html"
    return render(request, view, template, status=status, title=title, message=message, param=param)
