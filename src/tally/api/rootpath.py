"""Serving under a path prefix behind a reverse proxy (`server.root_path`, e.g. /tally).

ASGI's `root_path` names the prefix and `path` carries it (the ASGI spec; uvicorn's --root-path does the same). A
proxy may strip the prefix before passing a request on, or keep it: either way the app then sees the path with the
prefix and `root_path` set, so its routes, the studio's mount, its links and its cookie's path all agree.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send


class RootPathMiddleware:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app, self.api = app, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = getattr(self.api.state, "runtime", None)
        root = runtime.settings.server.root_path if runtime is not None else ""
        if scope["type"] in ("http", "websocket") and root and not scope.get("root_path"):
            scope = dict(scope, root_path=root)
            path = scope["path"]
            if path != root and not path.startswith(root + "/"):
                scope["path"] = root + path
                raw = scope.get("raw_path")
                if raw is not None:
                    scope["raw_path"] = root.encode() + raw
        await self.app(scope, receive, send)
