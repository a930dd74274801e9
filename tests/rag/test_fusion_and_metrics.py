"""Rank fusion and the evaluation metrics."""

from __future__ import annotations

import pytest

from tally.rag.evaluate import answer_metrics, contains_answer, exact_match, make_facts, retrieval_metrics
from tally.rag.fusion import rrf, score_fusion


def test_rrf_rewards_agreement_and_is_deterministic() -> None:
    dense = [("a", 0.9), ("b", 0.8), ("c", 0.1)]
    lexical = [("b", 12.0), ("d", 3.0)]
    fused = rrf([dense, lexical], k=60)
    assert [key for key, _ in fused] == ["b", "a", "d", "c"]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert rrf([[("x", 1.0)], [("y", 1.0)]]) == rrf([[("y", 1.0)], [("x", 1.0)]])  # ties broken by key


def test_score_fusion_normalises_each_list() -> None:
    fused = dict(score_fusion([("a", 0.9), ("b", 0.5)], [("b", 20.0), ("c", 10.0)], dense_weight=0.5))
    assert fused == {"a": 0.5, "b": 0.5, "c": 0.0}


def test_retrieval_metrics() -> None:
    m = retrieval_metrics([["x", "y"], ["a", "b", "c", "d", "e", "f"], []], ["y", "f", "z"], k=5)
    assert m["recall@5"] == pytest.approx(1 / 3) and m["mrr"] == pytest.approx((1 / 2 + 1 / 6) / 3)


def test_answer_metrics() -> None:
    assert exact_match("The Quiveth.", "quiveth") and not exact_match("In Quiveth", "Quiveth")
    assert contains_answer("She was born in Quiveth [1].", "Quiveth") and not contains_answer("Quivethian", "Quiveth")
    m = answer_metrics([
        {"answer": "Quiveth", "gold": "Quiveth"},
        {"answer": "Born in Quiveth [1].", "gold": "Quiveth", "relevant": ["h1"],
         "citations": [{"row_hash": "h1"}, {"row_hash": "h2"}]},
    ])  # fmt: skip
    assert m["exact_match"] == 0.5 and m["contains_answer"] == 1.0
    assert m["citation_precision"] == 0.5 and m["citation_recall"] == 1.0


def test_made_up_facts_are_deterministic_and_paraphrased() -> None:
    facts = make_facts(20, seed=3)
    assert facts == make_facts(20, seed=3) and len(facts) == 20 * 6
    assert len({f.person for f in facts}) == 20
    for f in facts:
        assert f.value in f.row["output"] and f.row["instruction"] not in f.questions
