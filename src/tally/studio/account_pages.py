"""The studio's front page, sign-in and sign-out."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import Response

from tally.identity import AuthError, authenticate
from tally.studio.pages import View, page, redirect, render, safe_next, set_session
from tally.studio.session import BrowserSession

router = APIRouter()

MAX_KEY_CHARS = 256  # a key is ~60 characters; more is not a key


@router.get("/")
def home(request: Request, view: View = Depends(page("anonymous"))) -> Response:
    return render(request, view, "home.html")


@router.get("/sign-in")
def sign_in_form(request: Request, next: str = "/", view: View = Depends(page("anonymous"))) -> Response:
    return render(request, view, "sign_in.html", next=safe_next(next), error=None)


@router.post("/sign-in")
def sign_in(
    request: Request,
    api_key: str = Form("", max_length=MAX_KEY_CHARS),
    next: str = Form("/", max_length=2048),
    view: View = Depends(page("anonymous")),
) -> Response:
    """Show an API key once: the browser gets a session cookie naming the key (not the key itself)."""
    target = safe_next(next)
    token = api_key.strip()
    if not token:
        return render(request, view, "sign_in.html", 400, next=target, error="api_key: enter your API key (tly_...)")
    try:
        with view.runtime.store.read() as s:
            who = authenticate(s, token)
    except AuthError as exc:
        return render(request, view, "sign_in.html", 401, next=target, error=f"api_key: {exc.message}")
    set_session(request, BrowserSession.new(who.key_id))  # a new nonce: tokens from before sign-in stop working
    return redirect(request, target)


@router.post("/sign-out")
def sign_out(request: Request, view: View = Depends(page("anonymous"))) -> Response:
    set_session(request, None)
    return redirect(request, "/sign-in")
