"""Opening the configured ledger: the same entry point for the API, the CLI and other packages."""

from __future__ import annotations

from tally.config import Settings
from tally.ledger.log import Ledger
from tally.ledger.notes import load_or_create_signer
from tally.store import Store


def open_ledger(settings: Settings, store: Store) -> Ledger:
    signer = load_or_create_signer(settings.log_key_path, settings.ledger.origin)
    return Ledger(
        store,
        signer,
        origin=settings.ledger.origin,
        witness_path=settings.witness_path,
        max_batch=settings.ledger.max_batch,
        tile_height=settings.ledger.tile_height,
    )
