"""Proof of Attribution: which contributions and contributors shaped an answer, with the evidence.

Signals: verbatim spans (suffix array), RAG context (leave-one-out), representation similarity and gradient
influence (normalised cosine, DataInf) against the adapter's training-data index. See docs/attribution.md.
"""

from tally.attribution.record import (
    AttributionRecord,
    Credits,
    Evidence,
    InferenceAttributed,
    MethodResult,
    Mode,
    Share,
)

__all__ = ["AttributionRecord", "Credits", "Evidence", "InferenceAttributed", "MethodResult", "Mode", "Share"]
