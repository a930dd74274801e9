"""Evaluation: metric definitions, eval-use permission, results in the table and ledger, the leaderboard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.datanets.conftest import World

from tally.factory.config import SourceCfg
from tally.factory.errors import DataRefusedError
from tally.factory.evaluation import evaluate, leaderboard
from tally.factory.metrics import is_classification, label_accuracy, normalise, token_f1
from tally.factory.tables import EvalRow
from tally.models import load_model, load_tokenizer


def test_metric_definitions() -> None:
    assert normalise("The  Korvath!") == "korvath"
    assert token_f1("born in Korvath", "Korvath") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "y") == 0.0
    assert is_classification(["yes", "no", "yes", "no", "yes", "no"])
    assert not is_classification(["Korvath", "Drennick", "Ulmsby"])


def test_label_accuracy_ranks_labels_by_likelihood(tiny_model: Path) -> None:
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    convs = [[{"role": "user", "content": f"Is {i} even?"}, {"role": "assistant", "content": "yes" if i % 2 else "no"}]
             for i in range(4)]  # fmt: skip
    acc = label_accuracy(model, tok, convs, batch_size=4)
    assert acc in (0.0, 0.25, 0.5, 0.75, 1.0)


def test_evaluate_records_results_and_builds_a_leaderboard(people: World, tiny_model: Path) -> None:
    people.create("secret-eval", policy="open", uses=["train"])
    with people.ledger.store.read() as s, pytest.raises(DataRefusedError, match="does not permit use 'eval'"):
        from tally.factory.data import load_examples

        load_examples(s, people.dev, [SourceCfg(datanet="secret-eval")], use="eval")
    results = evaluate(people.settings, people.ledger, people.dev, [SourceCfg(datanet="people")],
                       base_model=str(tiny_model), max_new_tokens=4)  # fmt: skip
    assert len(results) == 1 and results[0].examples == 8
    m = results[0].metrics
    assert {"loss", "perplexity", "exact_match", "token_f1"} <= set(m) and m["perplexity"] > 1
    entry = json.loads(people.ledger.entries(people.ledger.size() - 1, 1)[0])
    assert entry["type"] == "factory.evaluated" and entry["payload"]["datanet"] == "people"
    with people.ledger.store.read() as s:
        assert s.query(EvalRow).count() == 1
        board = leaderboard(s, "people", "loss")
    assert board[0]["rank"] == 1 and board[0]["model"] == str(tiny_model)
