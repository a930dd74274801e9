"""Settings and the data directory layout."""

from tally.config.settings import (
    DatanetSettings,
    LedgerSettings,
    ModelSettings,
    ServerSettings,
    Settings,
    get_settings,
    load_settings,
)

__all__ = [
    "DatanetSettings",
    "LedgerSettings",
    "ModelSettings",
    "ServerSettings",
    "Settings",
    "get_settings",
    "load_settings",
]
