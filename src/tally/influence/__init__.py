"""Training-data influence for LoRA adapters: per-example gradients, seeded per-layer projection, the index file,
and scoring (cosine, DataInf, Gauss-Newton; the contrastive query's token weights in `contrast`).

Imports only `tally.models` and `tally.config`. See docs/factory.md ("Training-data index") and docs/influence.md.
"""

from tally.influence.capture import GradCapture, example_gradients, project_weight_grads
from tally.influence.hidden import HiddenCapture
from tally.influence.index import INDEX_JSON, INDEX_TENSORS, InfluenceIndex, load_index, save_index, scores
from tally.influence.projection import Projector
from tally.influence.scoring import IndexScorer

__all__ = [
    "INDEX_JSON",
    "INDEX_TENSORS",
    "GradCapture",
    "HiddenCapture",
    "IndexScorer",
    "InfluenceIndex",
    "Projector",
    "example_gradients",
    "load_index",
    "project_weight_grads",
    "save_index",
    "scores",
]
