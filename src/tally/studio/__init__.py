"""Tally Studio: the web UI, served by the API app at /studio (docs/studio.md).

Server-rendered pages (Jinja2, templates in `templates/`) with a little JavaScript (`static/studio.js`, htmx and Pico
CSS from npm, served from node_modules under /studio/vendor/). The studio holds no logic of its own: each page calls
the same service functions the API and the CLI call, and decides who may see it with the same access policy
(`tally.answers.policy`), declared beside the page with `Depends(page(...))`.

The framework (`tally.studio.pages`):

- `page(rule)`: the signed-in caller (`View.who`), checked against the page's rule; a visitor who is not signed in
  is sent to /studio/sign-in and back.
- `check_csrf`: every POST carries the session's CSRF token (hidden field `csrf`, or header `X-CSRF-Token`);
  templates put `{{ csrf_field(view) }}` in each form. Checked once, for every router, before the page runs.
- `render(request, view, template, **context)`, `redirect(request, path)`, `url(request, path)`.
- Errors: a `TallyError` becomes the error page with its message, the field at fault and the kind's status.

A new group of pages is an `APIRouter` added to `routers()` below (its templates extend `base.html`).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI

from tally.answers import Runtime
from tally.studio import account_pages
from tally.studio.app import create_studio, start
from tally.studio.pages import View, page, redirect, render, url

MOUNT_PATH = "/studio"


def routers() -> list[APIRouter]:
    """The studio's page groups, in navigation order."""
    from tally.studio import datanet_pages, factory_pages, ledger_pages, models_pages, playground_pages, rewards_pages

    return [account_pages.router, datanet_pages.router, factory_pages.router, models_pages.router,
            playground_pages.router, ledger_pages.router, rewards_pages.router]  # fmt: skip


def mount(app: FastAPI) -> FastAPI:
    """Mount the studio on the API app at /studio; returns the studio app (start it with `start_studio`)."""
    studio = create_studio(app, routers())
    app.mount(MOUNT_PATH, studio, name="studio")
    return studio


def start_studio(studio: FastAPI, runtime: Runtime) -> None:
    """Called when the API app starts, with its runtime."""
    start(studio, runtime)


__all__ = ["MOUNT_PATH", "View", "mount", "page", "redirect", "render", "start_studio", "url"]
