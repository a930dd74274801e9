"""The dependency that hands routes the runtime the app was started with."""

from __future__ import annotations

from fastapi import Request

from tally.answers import Runtime

AppState = Runtime  # routes read settings, store and ledger from it


def app_state(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime
