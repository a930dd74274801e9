"""The FastAPI application. Routes are thin: they call the packages' service functions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import tally
from tally.api import datanet_routes, errors, identity_routes, ledger_routes
from tally.api.state import AppState
from tally.config import Settings, get_settings
from tally.ledger import open_ledger
from tally.store import open_store


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        app.state.tally = AppState(settings=settings, store=store, ledger=open_ledger(settings, store))
        try:
            yield
        finally:
            store.dispose()

    app = FastAPI(title="Tally", version=tally.__version__, lifespan=lifespan)
    errors.install(app)

    @app.get("/health")
    def health() -> dict[str, object]:
        state: AppState = app.state.tally
        return {"status": "ok", "version": tally.__version__, "ledger_size": state.ledger.size()}

    app.include_router(ledger_routes.router)
    app.include_router(identity_routes.router)
    app.include_router(datanet_routes.router)
    return app
