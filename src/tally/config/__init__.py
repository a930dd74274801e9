"""Settings and the data directory layout, and the process settings a server applies at start."""

from tally.config.process import apply_server_process_settings
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
    "apply_server_process_settings",
    "get_settings",
    "load_settings",
]
