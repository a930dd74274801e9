"""Retrieval quality on a labelled set built from a datanet, with the real MiniLM model (slow: loading it and
embedding a few hundred chunks takes seconds on a CPU)."""

from __future__ import annotations

import pytest
from tests.rag.conftest import World, alpaca, snapshot

from tally.rag import RagSettings, build_index
from tally.rag.embed import load_embedder
from tally.rag.evaluate import labelled_questions, make_facts, retrieval_eval


@pytest.mark.slow
def test_hybrid_retrieval_beats_each_retriever_alone_on_made_up_people(world: World, rag_settings: RagSettings) -> None:
    facts = make_facts(40, seed=7)
    world.create("people", policy="open")
    world.upload(world.alice, "people", alpaca([(f.row["instruction"], f.row["output"]) for f in facts]))
    snapshot(world, "people")
    questions = labelled_questions(facts, seed=7)[::4]  # 60 paraphrased questions
    embedder = load_embedder(rag_settings)  # loaded once for the build and every query
    with world.tx() as s:
        report = build_index(s, world.owner, "people", settings=rag_settings, embedder=embedder)
        assert report.embedded == len(facts) and embedder.dim == 384
        metrics = retrieval_eval(
            s, world.ledger, world.dev, ["people"], questions, settings=rag_settings, embedder=embedder
        )
    print(metrics)  # shown with -s
    hybrid, bm25, dense = (metrics[m]["recall@5"] for m in ("hybrid", "bm25", "dense"))
    assert hybrid >= max(bm25, dense) and hybrid >= 0.9, metrics
    assert metrics["hybrid"]["mrr"] >= max(metrics["bm25"]["mrr"], metrics["dense"]["mrr"]) - 0.02, metrics
