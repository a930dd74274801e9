"""Factory errors: messages are written for the user (the CLI prints them, the API returns them)."""

from __future__ import annotations


class FactoryError(ValueError):
    """A bad config, bad data or a failed step, explained."""


class DataRefusedError(FactoryError):
    """Some requested data may not be used for training; the message names each datanet and why."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        lines = "; ".join(f"{slug}: {why}" for slug, why in sorted(reasons.items()))
        super().__init__(f"refused to train on {len(reasons)} datanet(s): {lines}")
