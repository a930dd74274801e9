"""Proof of Attribution: which contributions and contributors shaped an answer, with the evidence.

Signals: verbatim spans (suffix array), RAG context (leave-one-out), representation similarity and gradient
influence (normalised cosine, DataInf) against the adapter's training-data index. See docs/attribution.md.
"""

import importlib
from typing import TYPE_CHECKING, Any

from tally.attribution.record import (
    AttributionRecord,
    Credits,
    Evidence,
    InferenceAttributed,
    MethodResult,
    Mode,
    Share,
)

if TYPE_CHECKING:
    from tally.attribution.reputation import (
        FlaggedRow,
        contributor_reputation,
        flagged_rows_for_owner,
        readable_datanets,
    )
    from tally.attribution.service import Answer, AttributionError, Attributor, get_record

# loaded on first use: the service imports torch, which reading a record or a reputation does not need
_WHERE = {
    "Answer": "service",
    "AttributionError": "service",
    "Attributor": "service",
    "get_record": "service",
    "FlaggedRow": "reputation",
    "contributor_reputation": "reputation",
    "flagged_rows_for_owner": "reputation",
    "readable_datanets": "reputation",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"tally.attribution.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Answer",
    "AttributionError",
    "AttributionRecord",
    "Attributor",
    "Credits",
    "Evidence",
    "FlaggedRow",
    "InferenceAttributed",
    "MethodResult",
    "Mode",
    "Share",
    "contributor_reputation",
    "flagged_rows_for_owner",
    "get_record",
    "readable_datanets",
]
