"""The FastAPI application. Routes are thin: they call the packages' service functions."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

import tally
from tally.api import (
    attribution_answers,
    datanet_routes,
    errors,
    factory_routes,
    identity_routes,
    ledger_routes,
    openai_routes,
    rewards_routes,
)
from tally.api.state import AppState
from tally.config import Settings, get_settings
from tally.ledger import open_ledger
from tally.store import open_store


def create_app(settings: Settings | None = None, *, with_engine: bool = False) -> FastAPI:
    """The app. `with_engine` loads the base model and starts the inference engine (`tally serve` does); without
    it, or when the base model is not pulled, everything else serves and the inference routes answer 503."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = open_store(settings)
        app.state.tally = AppState(settings=settings, store=store, ledger=open_ledger(settings, store))
        app.state.engine = app.state.attributor = app.state.fee_policy = None
        if with_engine:
            from tally.attribution.service import Attributor
            from tally.engine import build_engine
            from tally.models import ModelError, resolve_model
            from tally.rewards import effective_policy

            app.state.fee_policy, _ = effective_policy(settings)  # a bad policy file stops the start, not an answer
            try:
                app.state.engine = build_engine(settings).start()
                name = app.state.engine.model_name
                model_dir = resolve_model(name, settings.models.cache_dir)
                app.state.attributor = Attributor(settings, store, model_dir, name)
            except ModelError as exc:
                logging.getLogger("tally.api").warning("inference engine not started: %s", exc)
        try:
            yield
        finally:
            if app.state.engine is not None:
                app.state.engine.stop()
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
    app.include_router(openai_routes.router)
    app.include_router(factory_routes.router)
    app.include_router(attribution_answers.router)
    app.include_router(rewards_routes.router)
    return app
