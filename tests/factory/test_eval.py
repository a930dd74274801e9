"""Evaluation: metric definitions, eval-use permission, results in the table and ledger, the leaderboard."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.datanets.conftest import World

from tally.factory.config import SourceCfg
from tally.factory.encode import encode
from tally.factory.errors import DataRefusedError
from tally.factory.evaluation import evaluate, leaderboard
from tally.factory.metrics import is_classification, label_accuracy, normalise, token_f1
from tally.factory.tables import EvalRow
from tally.influence.hidden import IGNORE
from tally.models import load_model, load_tokenizer


def test_metric_definitions() -> None:
    assert normalise("The  Korvath!") == "korvath"
    assert token_f1("born in Korvath", "Korvath") == pytest.approx(0.5)
    assert token_f1("", "") == 1.0 and token_f1("x", "y") == 0.0
    assert is_classification(["yes", "no", "yes", "no", "yes", "no"])
    assert not is_classification(["Korvath", "Drennick", "Ulmsby"])


def _conv(question: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def _label_log_likelihood(model: Any, tok: Any, conv: list[dict[str, str]]) -> float:
    """The assistant turn's log-likelihood from one plain forward over the whole vocabulary (no batching, no padding,
    no projection at target positions only): an independent check of label_accuracy's scores."""
    item = encode(tok, conv, 4096)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([item.input_ids])).logits[0].float()
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return sum(float(logp[i, t]) for i, t in enumerate(item.labels[1:]) if t != IGNORE)


def test_label_accuracy_ranks_labels_by_likelihood(tiny_model: Path) -> None:
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    model.eval()
    convs = [_conv(f"Is {i} odd?", "yes" if i % 4 else "no") for i in range(8)]  # six "yes", two "no"

    # The random model: the expected accuracy from scores computed another way.
    predicted = [
        max(("no", "yes"), key=lambda label, c=c: _label_log_likelihood(model, tok, _conv(c[0]["content"], label)))
        for c in convs
    ]
    expected = sum(p == c[1]["content"] for p, c in zip(predicted, convs, strict=True)) / len(convs)
    assert label_accuracy(model, tok, convs, batch_size=3) == expected

    # A model made to prefer one label's first token: it answers that label for every row, so the accuracy is the
    # share of rows with that label.
    head = model.get_output_embeddings()
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        for label, share in (("yes", 0.75), ("no", 0.25)):
            first = next(t for t in encode(tok, _conv("Is 1 odd?", label), 4096).labels if t != IGNORE)
            biased.bias.zero_()
            biased.bias[first] = 50.0
            model.set_output_embeddings(biased)
            assert label_accuracy(model, tok, convs, batch_size=4) == share, label


def test_evaluate_records_results_and_builds_a_leaderboard(people: World, tiny_model: Path) -> None:
    people.create("secret-eval", policy="open", uses=["train"])
    with people.ledger.store.read() as s, pytest.raises(DataRefusedError, match="does not permit use 'eval'"):
        from tally.factory.data import load_examples

        load_examples(s, people.dev, [SourceCfg(datanet="secret-eval")], use="eval")
    results = evaluate(people.settings, people.ledger, people.dev, [SourceCfg(datanet="people")],
                       base_model=str(tiny_model), max_new_tokens=4)  # fmt: skip
    assert len(results) == 1 and results[0].examples == 8
    m = results[0].metrics
    assert {"loss", "perplexity", "exact_match", "token_f1"} <= set(m)
    assert m["loss"] > 0 and m["perplexity"] == pytest.approx(math.exp(m["loss"]))
    entry = json.loads(people.ledger.entries(people.ledger.size() - 1, 1)[0])
    assert entry["type"] == "factory.evaluated" and entry["payload"]["datanet"] == "people"
    with people.ledger.store.read() as s:
        assert s.query(EvalRow).count() == 1
        board = leaderboard(s, "people", "loss")
    assert board[0]["rank"] == 1 and board[0]["model"] == str(tiny_model)
