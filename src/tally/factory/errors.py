"""Factory errors: messages are written for the user (the CLI prints them, the API returns them); each has a kind
from the one taxonomy (`tally.config.errors`)."""

from __future__ import annotations

from tally.config.errors import TallyError


class FactoryError(TallyError, ValueError):
    """A bad config, bad data or a failed step, explained."""


class DataRefusedError(FactoryError):
    """Some requested data may not be used for training; the message names each datanet and why."""

    kind = "forbidden"

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        lines = "; ".join(f"{slug}: {why}" for slug, why in sorted(reasons.items()))
        super().__init__(f"refused to train on {len(reasons)} datanet(s): {lines}", reasons=reasons)

    def __reduce__(self) -> tuple[object, ...]:  # pickles despite its own constructor arguments
        return (DataRefusedError, (self.reasons,))
