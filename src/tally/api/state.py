"""What the running app holds, and the dependency that hands it to routes."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from tally.config import Settings
from tally.ledger import Ledger
from tally.store import Store


@dataclass
class AppState:
    settings: Settings
    store: Store
    ledger: Ledger


def app_state(request: Request) -> AppState:
    state: AppState = request.app.state.tally
    return state
