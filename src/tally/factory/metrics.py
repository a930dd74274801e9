"""Evaluation metrics on one model: loss/perplexity, generated-answer exact match and token F1, label accuracy.

Exact match and F1 use SQuAD's answer normalisation (lower case, no punctuation, no articles, single spaces),
so "Korvath." and "korvath" agree. Classification-style sets (few distinct short answers, each repeated) are
scored by ranking every label by its log-likelihood after the prompt: accuracy then does not depend on the
model phrasing its answer in a particular way.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Any

import torch

from tally.factory.encode import Encoded, collate, encode, mean_token_loss, pad_id, prompt_ids, token_losses

_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalise(prediction).split(), normalise(reference).split()
    common = sum((Counter(p) & Counter(r)).values())
    if not p or not r or not common:
        return float(p == r)
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def is_classification(answers: list[str]) -> bool:
    """Few distinct short labels, each used more than once: score by ranking labels, not by generating."""
    labels = Counter(a.strip() for a in answers)
    return 2 <= len(labels) <= max(2, len(answers) // 3) and all(len(a.split()) <= 3 for a in labels)


def loss_and_ppl(model: Any, items: list[Encoded], pad: int, batch_size: int) -> tuple[float, float]:
    loss = mean_token_loss(model, items, pad, batch_size)
    return loss, math.exp(min(loss, 50.0))


def generate(model: Any, tok: Any, prompts: list[list[int]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers, batched with left padding; cut at the end-of-turn token."""
    pad, outs = pad_id(tok), []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                pad_token_id=pad, eos_token_id=tok.eos_token_id,
            )  # fmt: skip
        outs += [tok.decode(row[width:], skip_special_tokens=True).strip() for row in gen]
    return outs


def label_accuracy(model: Any, tok: Any, examples: list[list[dict[str, str]]], batch_size: int) -> float:
    """Share of rows whose own label has the highest log-likelihood among all labels of the set."""
    labels = sorted({m[-1]["content"].strip() for m in examples})
    pad, correct = pad_id(tok), 0
    for messages in examples:
        items = [encode(tok, [*messages[:-1], {"role": "assistant", "content": lab}], 4096) for lab in labels]
        scores: list[float] = []
        with torch.no_grad():
            for i in range(0, len(items), batch_size):
                sums, _ = token_losses(model, collate(items[i : i + batch_size], pad))
                scores += (-sums).tolist()
        correct += labels[max(range(len(labels)), key=lambda j: scores[j])] == messages[-1]["content"].strip()
    return correct / max(1, len(examples))


def evaluate_model(
    model: Any, tok: Any, conversations: list[list[dict[str, str]]], *, max_length: int = 512,
    max_new_tokens: int = 32, batch_size: int = 16,
) -> tuple[dict[str, float], list[dict[str, str]]]:  # fmt: skip
    """All metrics on one set of conversations (each ending with the reference assistant turn)."""
    model.eval()
    pad = pad_id(tok)
    items = [encode(tok, c, max_length) for c in conversations]
    loss, ppl = loss_and_ppl(model, items, pad, batch_size)
    metrics: dict[str, float] = {"loss": loss, "perplexity": ppl}
    refs = [c[-1]["content"] for c in conversations]
    preds = generate(model, tok, [prompt_ids(tok, c[:-1]) for c in conversations], max_new_tokens, batch_size)
    metrics["exact_match"] = sum(normalise(p) == normalise(r) for p, r in zip(preds, refs, strict=True)) / len(refs)
    metrics["token_f1"] = sum(token_f1(p, r) for p, r in zip(preds, refs, strict=True)) / len(refs)
    metrics["contains"] = sum(normalise(r) in normalise(p) for p, r in zip(preds, refs, strict=True)) / len(refs)
    if is_classification(refs):
        metrics["accuracy"] = label_accuracy(model, tok, conversations, batch_size)
    samples = [{"reference": r, "prediction": p} for r, p in zip(refs, preds, strict=True)]
    return metrics, samples
