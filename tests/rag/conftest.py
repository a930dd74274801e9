"""RAG fixtures: the datanet world, a cheap deterministic embedder, and helpers to fill and snapshot datanets."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from tests.datanets import conftest as datanet_fixtures
from tests.datanets.conftest import World, alpaca

from tally.datanets import review, snapshots
from tally.datanets.snapshots import Snapshot
from tally.identity import Principal
from tally.rag import RagSettings

world = datanet_fixtures.world  # the datanet tests' fixture, re-exported

_WORD = re.compile(r"\w+")


class BagOfWords:
    """A hashed bag-of-words embedder: deterministic, instant, and counts how many texts it embedded."""

    name = "test-bag-of-words"
    dim = 256

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def embed(self, texts: list[str], batch_size: int = 128, threads: int | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                out[i, int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "big") % self.dim] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    @property
    def embedded(self) -> int:
        return sum(len(c) for c in self.calls)


@pytest.fixture
def embedder() -> BagOfWords:
    return BagOfWords()


@pytest.fixture
def rag_settings(world: World, tmp_path: Path) -> RagSettings:
    return RagSettings.from_settings(world.settings, index_dir=tmp_path / "rag-index")


def add_rows(world: World, slug: str, rows: list[tuple[str, str]], who: Principal | None = None) -> list[str]:
    """Upload Alpaca rows and accept them; returns their row hashes in upload order."""
    result = world.upload(who or world.alice, slug, alpaca(rows))
    with world.tx() as s:
        review.review(s, world.ledger, world.owner, slug, decision="accept", contribution=result.id)
    from tally.datanets.formats import row_hash

    return [row_hash({"instruction": q, "input": "", "output": a}) for q, a in rows]


def snapshot(world: World, slug: str) -> Snapshot:
    with world.tx() as s:
        return snapshots.create_snapshot(s, world.ledger, world.owner, slug)


def ledger_events(world: World, event_type: str) -> list[dict]:
    out = []
    for body in world.ledger.entries(0, 100_000):
        entry = json.loads(body)
        if entry["type"] == event_type:
            out.append(entry["payload"])
    return out
