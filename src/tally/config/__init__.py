"""Settings and the data directory layout."""

from tally.config.settings import (
    LedgerSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    get_settings,
    load_settings,
)

__all__ = [
    "LedgerSettings",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "get_settings",
    "load_settings",
]
