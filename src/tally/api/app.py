"""The FastAPI application. Routes are thin: they shape HTTP and call the packages' service functions.

The runtime (settings, store, ledger, engine, attributor, fee policy) is built once when the app starts and handed
to routes by `app_state`; a test passes its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

import tally
from tally import studio
from tally.answers import Runtime, build_runtime
from tally.api import (
    attribution_routes,
    audit_routes,
    chain_routes,
    datanet_routes,
    errors,
    factory_routes,
    identity_routes,
    ledger_routes,
    openai_routes,
    policy,
    rewards_routes,
)
from tally.api.limits import LimitsMiddleware
from tally.api.logging import RequestLogMiddleware
from tally.api.rootpath import RootPathMiddleware
from tally.config import Settings, load_settings


def create_app(
    settings: Settings | None = None,
    *,
    with_engine: bool = False,
    runtime: Runtime | None = None,
    anchoring: bool = True,
) -> FastAPI:
    """The app. `with_engine` loads the base model and starts the inference engine (`tally serve` does); without
    it, or when the base model is not pulled, everything else serves and the inference routes answer 503. A given
    `runtime` is used as it is (started with the app, closed after). `anchoring` false: this process never anchors
    (replicas leave that to the one process that started them)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or build_runtime(settings or load_settings(), with_engine=with_engine)
        app.state.runtime = rt.start(anchoring=anchoring)
        studio.start_studio(studio_app, rt)
        try:
            yield
        finally:
            rt.close()

    app = FastAPI(title="Tally", version=tally.__version__, lifespan=lifespan)
    errors.install(app)
    app.add_middleware(LimitsMiddleware)  # inside the request log, so refusals are logged too
    app.add_middleware(RequestLogMiddleware)
    app.add_middleware(RootPathMiddleware, api=app)  # outermost: every layer sees the path as the browser sent it

    @app.get("/health", dependencies=[Depends(policy.allow("anonymous"))])
    def health() -> dict[str, object]:
        rt: Runtime = app.state.runtime
        return {"status": "ok", "version": tally.__version__, "ledger_size": rt.ledger.size()}

    for module in (
        ledger_routes,
        identity_routes,
        datanet_routes,
        openai_routes,
        factory_routes,
        attribution_routes,
        rewards_routes,
        chain_routes,
        audit_routes,
    ):
        app.include_router(module.router)
    studio_app = studio.mount(app)  # the web UI at /studio: its pages declare their rules with the same policy
    return app
