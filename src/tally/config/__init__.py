"""Settings and the data directory layout."""

from tally.config.settings import (
    ATTRIBUTION_MODES,
    AttributionMode,
    AttributionSettings,
    DatanetSettings,
    EngineSettings,
    LedgerSettings,
    LogSettings,
    ModelSettings,
    RagAlias,
    RewardsSettings,
    ServerSettings,
    Settings,
    StudioSettings,
    get_settings,
    load_settings,
)

__all__ = [
    "ATTRIBUTION_MODES",
    "AttributionMode",
    "AttributionSettings",
    "DatanetSettings",
    "EngineSettings",
    "LedgerSettings",
    "LogSettings",
    "ModelSettings",
    "RagAlias",
    "RewardsSettings",
    "ServerSettings",
    "Settings",
    "StudioSettings",
    "get_settings",
    "load_settings",
]
