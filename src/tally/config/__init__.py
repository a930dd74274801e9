"""Settings and the data directory layout."""

from tally.config.settings import (
    DatanetSettings,
    LedgerSettings,
    ModelSettings,
    RagAlias,
    ServerSettings,
    Settings,
    get_settings,
    load_settings,
)

__all__ = [
    "DatanetSettings",
    "LedgerSettings",
    "ModelSettings",
    "RagAlias",
    "ServerSettings",
    "Settings",
    "get_settings",
    "load_settings",
]
