"""A labelled retrieval set with known answers, and the metrics to score retrieval and generated answers.

Why made-up people: facts nobody's model has memorised, so retrieval (and later answer accuracy with and without
RAG) measures the data, not pre-training. Each person has several attributes, so a name alone (BM25's strength)
does not pick the row, and the questions are paraphrases of the stored instruction, so wording alone (where BM25
fails) does not either; the dense retriever must understand the attribute and the lexical one must match the name.
"""

from __future__ import annotations

import random
import re
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tally.rag.service import Mode

_SYLLABLES = "ka lo mi ren sa tor vel dru na bek oss fi gal mor zen pa ril tes quo han lu dam ise yor".split()
_TOWNS = "Brask Ollen Quiveth Sarrow Tandel Umbrick Velmont Wexby Yarrow Zenith Corvel Drelling Eskar Fallow".split()
_JOBS = "baker carpenter astronomer beekeeper glassblower cartographer locksmith weaver".split()
_PETS = "tortoise parrot ferret hedgehog goldfish iguana rabbit owl".split()
_INSTRUMENTS = "cello oboe harp banjo accordion trombone sitar clarinet".split()
_FOODS = ["lentil soup", "plum dumplings", "mushroom risotto", "smoked trout", "apple pie", "barley bread"]
# attribute: (values, stored instruction, stored answer, paraphrased questions)
ATTRIBUTES: dict[str, tuple[list[str], str, str, list[str]]] = {
    "birthplace": (_TOWNS, "Where was {n} born?", "{n} was born in {v}.",
                   ["What is the hometown of {n}?", "In which town did {n} come into the world?"]),
    "job": (_JOBS, "What does {n} do for a living?", "{n} works as a {v}.",
            ["What is {n}'s profession?", "Which occupation does {n} have?"]),
    "pet": (_PETS, "What pet does {n} have?", "{n} keeps a {v} at home.",
            ["Which animal lives with {n}?", "What kind of animal does {n} look after?"]),
    "instrument": (_INSTRUMENTS, "Which instrument does {n} play?", "{n} plays the {v}.",
                   ["What music does {n} make, on which instrument?", "What can {n} perform music on?"]),
    "food": (_FOODS, "What is {n}'s favourite food?", "{n} loves eating {v}.",
             ["Which dish does {n} like best?", "What meal would {n} choose above all others?"]),
    "birth_year": ([str(y) for y in range(1931, 2004)], "In what year was {n} born?", "{n} was born in the year {v}.",
                   ["What is {n}'s birth year?", "In which year did {n} come into the world?"]),
}  # fmt: skip


@dataclass(frozen=True)
class Fact:
    person: str
    attribute: str
    value: str
    row: dict[str, str]  # the Alpaca row stored in the datanet
    questions: list[str]  # paraphrases, none equal to the stored instruction


def _name(rng: random.Random) -> str:
    def word() -> str:
        return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))).capitalize()

    return f"{word()} {word()}"


def make_facts(people: int, seed: int = 0, attributes: Sequence[str] | None = None) -> list[Fact]:
    """Facts about `people` made-up people (all attributes each), deterministic for a seed."""
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < people:
        name = _name(rng)
        if name not in seen:
            seen.add(name)
            names.append(name)
    facts = []
    for name in names:
        for attr in attributes or list(ATTRIBUTES):
            values, ask, say, paraphrases = ATTRIBUTES[attr]
            value = rng.choice(values)
            row = {"instruction": ask.format(n=name), "input": "", "output": say.format(n=name, v=value)}
            facts.append(Fact(name, attr, value, row, [p.format(n=name) for p in paraphrases]))
    return facts


def retrieval_metrics(ranked: Iterable[Sequence[str]], relevant: Iterable[str], k: int = 5) -> dict[str, float]:
    """recall@1, recall@k (is the one relevant id in the top k) and MRR over the whole ranked list, averaged."""
    hits, first, rr, n = 0, 0, 0.0, 0
    for ids, want in zip(ranked, relevant, strict=True):
        n += 1
        first += bool(ids) and ids[0] == want
        if want in ids[:k]:
            hits += 1
        if want in ids:
            rr += 1.0 / (list(ids).index(want) + 1)
    return {
        "recall@1": first / n if n else 0.0,
        f"recall@{k}": hits / n if n else 0.0,
        "mrr": rr / n if n else 0.0,
        "questions": float(n),
    }


def normalize_answer(text: str) -> str:
    """SQuAD-style: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(w for w in text.split() if w not in ("a", "an", "the"))


def exact_match(prediction: str, gold: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(gold)


def contains_answer(prediction: str, gold: str) -> bool:
    """The gold value appears in the answer as whole words (the fair test for sentence-long generations)."""
    return re.search(rf"(?:^| ){re.escape(normalize_answer(gold))}(?: |$)", normalize_answer(prediction)) is not None


def answer_metrics(items: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Score generated answers. Each item: answer (str), gold (str), and with RAG citations (list of citation
    dicts from postprocess_citations) and relevant (row hashes that hold the fact). Citation precision is over
    all citations made; citation recall is the share of RAG answers citing a relevant row."""
    n = em = contains = cited = good = with_rag = recalled = 0
    for item in items:
        n += 1
        em += exact_match(item["answer"], item["gold"])
        contains += contains_answer(item["answer"], item["gold"])
        if "citations" in item:
            with_rag += 1
            rows = [c["row_hash"] for c in item["citations"]]
            relevant = set(item.get("relevant", ()))
            cited += len(rows)
            good += sum(r in relevant for r in rows)
            recalled += any(r in relevant for r in rows)
    return {
        "answers": float(n), "exact_match": em / n if n else 0.0, "contains_answer": contains / n if n else 0.0,
        "citation_precision": good / cited if cited else 0.0,
        "citation_recall": recalled / with_rag if with_rag else 0.0,
    }  # fmt: skip


def labelled_questions(facts: Sequence[Fact], per_fact: int = 1, seed: int = 0) -> list[tuple[str, str]]:
    """(question, row hash of the row that answers it): paraphrases only, `per_fact` per fact."""
    from tally.datanets.formats import row_hash

    rng = random.Random(seed)
    return [(q, row_hash(f.row)) for f in facts for q in rng.sample(f.questions, min(per_fact, len(f.questions)))]


def retrieval_eval(
    session: Any, ledger: Any, principal: Any, datanets: list[str], questions: Sequence[tuple[str, str]],
    modes: Sequence[Mode] = ("hybrid", "bm25", "dense"), k: int = 5, **retrieve_kw: Any,
) -> dict[str, dict[str, float]]:  # fmt: skip
    """recall@k and MRR@k per mode, through the service's `retrieve` (permissions, ledger record and all)."""
    from tally.rag.service import retrieve

    out: dict[str, dict[str, float]] = {}
    for mode in modes:
        ranked = [
            [c.row_hash for c in retrieve(session, ledger, principal, datanets, q, top_k=k, mode=mode, **retrieve_kw)]
            for q, _ in questions
        ]
        out[mode] = retrieval_metrics(ranked, [h for _, h in questions], k=k)
    return out
