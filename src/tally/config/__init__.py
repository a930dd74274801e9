"""Settings and the data directory layout."""

from tally.config.settings import (
    AttributionSettings,
    DatanetSettings,
    LedgerSettings,
    ModelSettings,
    RagAlias,
    RewardsSettings,
    ServerSettings,
    Settings,
    get_settings,
    load_settings,
)

__all__ = [
    "AttributionSettings",
    "DatanetSettings",
    "LedgerSettings",
    "ModelSettings",
    "RagAlias",
    "RewardsSettings",
    "ServerSettings",
    "Settings",
    "get_settings",
    "load_settings",
]
