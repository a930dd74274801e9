"""Proof of Attribution: which contributions and contributors shaped an answer, with the evidence.

Signals: verbatim spans (suffix array), RAG context (leave-one-out), representation similarity and gradient
influence (normalised cosine, DataInf) against the adapter's training-data index. See docs/attribution.md.
"""

from typing import TYPE_CHECKING

from tally.attribution.record import (
    AttributionRecord,
    Credits,
    Evidence,
    InferenceAttributed,
    MethodResult,
    Mode,
    Share,
)
from tally.config.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _WHERE)


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
