"""Every package's ledger event types in one place, for whoever decodes or verifies the whole log."""

from __future__ import annotations


def load_event_types() -> None:
    """Import every package's event types, so verification checks each payload against its type as well as the
    envelope (the CLI imports packages lazily to start fast, so which types are known is not left to chance)."""
    import tally.attribution.record
    import tally.datanets.events
    import tally.factory.events
    import tally.identity.events
    import tally.rag.events
    import tally.rewards.accrual
    import tally.rewards.epochs  # noqa: F401
