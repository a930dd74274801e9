"""Answers with and without RAG on a labelled question set built from a datanet, with the real base model, and
sentence citations measured by context attribution beside the model's own [n] markers.

Builds a datanet of facts about made-up people (which the base model cannot know), asks paraphrased questions
through the base model alone and with retrieval (top_k sources, numbered in the prompt), and reports exact match,
"contains the answer", and citation precision and recall per (sentence, source) pair:

  gold       sentence s and retrieved source j form a gold pair when s states j's fact: j's value (the town, job,
             pet, ... of its row) appears in s as whole words. When several retrieved sources hold that value, those
             whose person is named in s (or is the person asked about) are gold; if none is, all of them are.
  predicted  measured: the drop of s without j is >= the threshold (leave-one-out up to
             attribution.citation_loo_max_chunks sources, the Lasso surrogate above), and s is neither a question
             nor holds a guess (attribution.citation_guess_nats; `guesses_cite` scores the same drops without that
             rule, `guess_sweep` with other guess levels); markers: the model wrote [j] in s.
  precision  |predicted and gold| / |predicted|;  recall  |predicted and gold| / |gold|; micro-averaged over every
             sentence of every answer (a citation on a sentence that states no retrieved fact is a false positive).

The threshold is calibrated on held-out questions (other made-up people, another seed): the drop threshold with the
best F1 there (ties: the higher one). The evaluation set reports the configured threshold
(attribution.citation_min_drop) and the one calibrated in this run. With --surrogate-top-k K (> the leave-one-out
limit) a second evaluation retrieves K sources and measures both leave-one-out and the surrogate on the same answers.
Prints one JSON document, then one summary line.

    python benchmarks/rag_answers.py [--people 6] [--top-k 3] [--calibration-people 6] [--surrogate-top-k 12]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tally.attribution.citations import SentenceDrops, find_guesses, sentence_drops
from tally.attribution.context import context_drops, context_surrogate
from tally.config import Settings, load_settings
from tally.datanets import contribute, service, snapshots
from tally.datanets.formats import row_hash
from tally.engine import SamplingParams, build_engine
from tally.identity import Principal, create_account
from tally.ledger import open_ledger
from tally.models import load_model, resolve_model
from tally.rag import RagSettings, build_rag_messages, postprocess_citations, retrieve
from tally.rag.embed import load_embedder
from tally.rag.evaluate import Fact, answer_metrics, contains_answer, make_facts
from tally.rag.index import IndexCache

THRESHOLDS = [0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
GUESS_LEVELS = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0]  # nats, besides the configured one (sensitivity of the rule)


@dataclass
class Scored:
    """One RAG answer: its sentences, the gold pairs, the marker pairs, and the measured drops per method."""

    question: str
    text: str
    sentences: list[tuple[int, int]]
    gold: set[tuple[int, int]]  # (sentence, chunk)
    markers: set[tuple[int, int]]
    claims: list[bool]  # per sentence: False for a question (never cited, see tally.rag.answers.is_question)
    drops: dict[str, np.ndarray]  # method -> [sentences, chunks]
    guessed: dict[str, dict[float, list[bool]]]  # method -> guess level -> per sentence: holds a token no source
    # explains (never cited)
    guess_nats: float  # the configured level (attribution.citation_guess_nats)
    seconds: dict[str, float]


def gold_pairs(sentences: list[str], chunks: list[Any], facts: dict[str, Fact], asked: Fact) -> set[tuple[int, int]]:
    gold: set[tuple[int, int]] = set()
    for s, sentence in enumerate(sentences):
        holding = [j for j, c in enumerate(chunks) if contains_answer(sentence, facts[c.row_hash].value)]
        if len(holding) > 1:  # several sources hold this value: the ones about the person named (or asked about)
            named = [
                j for j in holding
                if facts[chunks[j].row_hash].person == asked.person or facts[chunks[j].row_hash].person in sentence
            ]  # fmt: skip
            holding = named or holding
        gold.update((s, j) for j in holding)
    return gold


def prf(items: list[Scored], predicted: Any) -> dict[str, float]:
    """Micro precision / recall / F1 over (sentence, source) pairs; `predicted(item)` gives an item's pairs."""
    tp = fp = fn = 0
    for item in items:
        pred = predicted(item)
        tp += len(pred & item.gold)
        fp += len(pred - item.gold)
        fn += len(item.gold - pred)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f1": round(2 * p * r / (p + r), 4) if p + r else 0.0,
            "predicted": tp + fp, "gold": tp + fn, "true_positives": tp}  # fmt: skip


def measured(method: str, threshold: float, guess: float | None = None) -> Any:
    """Pairs at a drop threshold; sentences guessed at level `guess` cite nothing (None: the configured level,
    0: the rule off)."""

    def pairs(item: Scored) -> set[tuple[int, int]]:
        d = item.drops[method]
        guessed = item.guessed[method][item.guess_nats if guess is None else guess]
        return {
            (int(s), int(j)) for s, j in zip(*np.nonzero(d >= threshold), strict=True)
            if item.claims[s] and not guessed[s]
        }  # fmt: skip

    return pairs


def calibrate(items: list[Scored], method: str) -> tuple[float, list[dict[str, Any]]]:
    """The threshold with the best F1 on these (held-out) answers; ties go to the higher threshold."""
    sweep = [{"threshold": t, **prf(items, measured(method, t))} for t in THRESHOLDS]
    best = max(sweep, key=lambda row: (row["f1"], row["threshold"]))
    return float(best["threshold"]), sweep


class Bench:
    """A datanet of made-up facts, the engine that answers and the attribution model that measures."""

    def __init__(self, settings: Settings, facts: list[Fact], max_tokens: int) -> None:
        from tally.store import open_store

        self.settings, self.facts = settings, facts
        self.store = open_store(settings)
        self.ledger = open_ledger(settings, self.store)
        data = "".join(json.dumps(f.row) + "\n" for f in facts).encode()
        with self.store.transaction() as s:
            self.who = Principal.of(create_account(s, self.ledger, "eval", ["owner", "contributor"])[0])
            service.create_datanet(s, self.ledger, self.who, "people", kind="instruction", license="CC-BY-4.0",
                                   uses=["rag"], policy="open", max_upload_bytes=1 << 24,
                                   max_rows_per_day=100_000)  # fmt: skip
            contribute.contribute(s, self.ledger, self.who, "people", data, "people.jsonl",
                                  settings=settings.datanets, chain_id=settings.chain_id)  # fmt: skip
            snapshots.create_snapshot(s, self.ledger, self.who, "people")
        self.rag = RagSettings.from_settings(settings)
        self.embedder, self.indexes = load_embedder(self.rag), IndexCache()  # held across questions, as a server
        self.engine = build_engine(settings).start()
        self.tokenizer = self.engine.tokenizer
        self.model = load_model(resolve_model(settings.models.default, settings.models.cache_dir)).eval()
        self.params = SamplingParams(max_tokens=max_tokens, temperature=0)
        self.by_hash = {row_hash(f.row): f for f in facts}

    def chunks(self, question: str, top_k: int) -> list[Any]:
        with self.store.transaction() as s:
            return retrieve(
                s, self.ledger, self.who, ["people"], question, top_k, settings=self.rag, refresh=True,
                embedder=self.embedder, indexes=self.indexes,
            )  # fmt: skip

    def plain(self, question: str) -> str:
        return self.engine.generate(self.engine.encode_chat([{"role": "user", "content": question}]), self.params).text

    def answer(self, fact: Fact, top_k: int, methods: tuple[str, ...]) -> tuple[Scored, dict[str, Any]]:
        cfg = self.settings.attribution
        question = fact.questions[0]
        chunks = self.chunks(question, top_k)
        t = time.perf_counter()
        out = self.engine.generate(self.engine.encode_chat(build_rag_messages(question, chunks)), self.params)
        seconds = {"generate": time.perf_counter() - t}
        drops: dict[str, np.ndarray] = {}
        guessed: dict[str, dict[float, list[bool]]] = {}
        per: SentenceDrops | None = None
        for method in methods:
            t = time.perf_counter()
            if method == "leave_one_out":
                ctx = context_drops(self.model, self.tokenizer, question, chunks, out.token_ids)
            else:
                ctx = context_surrogate(
                    self.model, self.tokenizer, question, chunks, out.token_ids, ablations=cfg.citation_ablations,
                    alpha=cfg.citation_lasso_alpha, seed=cfg.citation_seed,
                )  # fmt: skip
            per = sentence_drops(
                self.tokenizer, out.token_ids, len(chunks), ctx, cfg.citation_lasso_alpha,
                guess_nats=cfg.citation_guess_nats,
            )  # fmt: skip
            seconds[method] = time.perf_counter() - t
            drops[method] = per.drops
            guessed[method] = {cfg.citation_guess_nats: [bool(g) for g in per.guesses]}
            for level in (0.0, *GUESS_LEVELS):  # the same pass, other guess levels (no model call, not timed)
                guessed[method].setdefault(level, [bool(g) for g in find_guesses(per, ctx, level)])
        assert per is not None
        sentences = [per.text[s.start : s.end] for s in per.sentences]
        scored = Scored(
            question, per.text, [(s.start, s.end) for s in per.sentences],
            gold_pairs(sentences, chunks, self.by_hash, fact),
            {(i, n - 1) for i, s in enumerate(per.sentences) for n in s.markers}, [s.claim for s in per.sentences],
            drops, guessed, cfg.citation_guess_nats, seconds,
        )  # fmt: skip
        text, citations = postprocess_citations(out.text, chunks)
        legacy = {"answer": text, "gold": fact.value, "citations": citations, "relevant": [row_hash(fact.row)]}
        return scored, legacy

    def close(self) -> None:
        self.engine.stop()
        self.store.dispose()


def run_set(
    tmp: Path, facts: list[Fact], top_k: int, methods: tuple[str, ...], max_tokens: int, label: str, plain: bool
) -> tuple[list[Scored], list[dict[str, Any]], list[dict[str, Any]]]:
    settings = load_settings(data_dir=tmp / label)
    bench = Bench(settings, facts, max_tokens)
    scored, legacy, without = [], [], []
    try:
        for fact in facts:
            if plain:
                without.append({"answer": bench.plain(fact.questions[0]), "gold": fact.value})
            one, old = bench.answer(fact, top_k, methods)
            scored.append(one)
            legacy.append(old)
            print(f"  {label} {len(scored)}/{len(facts)} {one.question!r}: {one.text.strip()[:70]!r}",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        bench.close()
    return scored, legacy, without


def seconds_of(items: list[Scored]) -> dict[str, float]:
    keys = items[0].seconds if items else {}
    return {k: round(float(np.median([i.seconds[k] for i in items])), 3) for k in keys}


def report(items: list[Scored], methods: tuple[str, ...], thresholds: dict[str, float]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "answers": len(items), "sentences": sum(len(i.sentences) for i in items),
        "markers_only": prf(items, lambda i: i.markers), "median_seconds": seconds_of(items),
    }  # fmt: skip
    for method in methods:
        out[method] = {name: {"threshold": t, **prf(items, measured(method, t))} for name, t in thresholds.items()}
        t = thresholds["configured"]
        out[method]["guesses_cite"] = {"threshold": t, **prf(items, measured(method, t, guess=0.0))}
        levels = sorted(items[0].guessed[method]) if items else []
        out[method]["guess_sweep"] = [
            {"guess_nats": g, "sentences_guessed": sum(sum(i.guessed[method][g]) for i in items),
             **prf(items, measured(method, t, guess=g))}
            for g in levels
        ]  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=6)
    parser.add_argument("--seed", type=int, default=3, help="seed of the evaluation people (3: the standing set)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--calibration-people", type=int, default=6, help="held-out people (seed 11) for the threshold")
    parser.add_argument("--surrogate-top-k", type=int, default=0, help="also evaluate K sources (0: skip)")
    parser.add_argument("--only-surrogate", action="store_true", help="skip the top_k sets (with --surrogate-top-k)")
    parser.add_argument(
        "--without-rag",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also answer each question without retrieval (the contains-answer baseline)",
    )
    parser.add_argument("--dump", type=Path, help="write every answer's sentences, gold pairs and drops here (JSON)")
    args = parser.parse_args()
    settings = load_settings()
    configured = settings.attribution.citation_min_drop
    facts = make_facts(args.people, seed=args.seed)
    held_out = make_facts(args.calibration_people, seed=11)
    assert not {f.person for f in facts} & {f.person for f in held_out}, "calibration people must be held out"
    loo, sur = ("leave_one_out",), ("leave_one_out", "surrogate")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        calibration: list[Scored] = []
        scored: list[Scored] = []
        legacy: list[dict[str, Any]] = []
        without: list[dict[str, Any]] = []
        calibrated, sweep = configured, []
        if not args.only_surrogate:
            if held_out:  # --calibration-people 0: score at the configured threshold only
                calibration, _, _ = run_set(tmp, held_out, args.top_k, loo, args.max_tokens, "calibration", plain=False)
                calibrated, sweep = calibrate(calibration, "leave_one_out")
            scored, legacy, without = run_set(
                tmp, facts, args.top_k, loo, args.max_tokens, "eval", plain=args.without_rag
            )
        many: dict[str, Any] | None = None
        dumped: dict[str, list[Scored]] = {"calibration": calibration, "eval": scored}
        if args.surrogate_top_k:
            cal_many, _, _ = run_set(tmp, held_out, args.surrogate_top_k, sur, args.max_tokens, "calibration-k",
                                     plain=False)  # fmt: skip
            cal_sur, sweep_sur = calibrate(cal_many, "surrogate")
            eval_many, _, _ = run_set(tmp, facts, args.surrogate_top_k, sur, args.max_tokens, "eval-k", plain=False)
            dumped.update({"calibration_k": cal_many, "eval_k": eval_many})
            many = {
                "top_k": args.surrogate_top_k, "calibrated_surrogate_threshold": cal_sur, "sweep_surrogate": sweep_sur,
                **report(eval_many, sur, {"configured": configured, "calibrated": calibrated,
                                          "calibrated_surrogate": cal_sur}),
            }  # fmt: skip
    seconds = time.perf_counter() - t0
    if args.dump:
        args.dump.write_text(json.dumps({
            name: [{"question": i.question, "text": i.text, "sentences": i.sentences, "gold": sorted(i.gold),
                    "markers": sorted(i.markers), "claims": i.claims,
                    "guessed": {m: {str(g): v for g, v in by.items()} for m, by in i.guessed.items()},
                    "drops": {m: d.tolist() for m, d in i.drops.items()},
                    "seconds": i.seconds} for i in items]
            for name, items in dumped.items()
        }))  # fmt: skip
    thresholds = {"configured": configured, "calibrated": calibrated}
    results: dict[str, Any] = {
        "questions": len(facts),
        "without_rag": answer_metrics(without) if without else "not run (--no-without-rag)",
        "with_rag": answer_metrics(legacy),
        "citations": {
            "definition": "micro precision/recall over (sentence, retrieved source) pairs; gold: the sentence states "
                          "the source's fact (its value as whole words); see the module docstring",
            "calibration": {"people": args.calibration_people, "seed": 11, "answers": len(calibration),
                            "threshold": calibrated, "sweep": sweep},
            **({f"top_k_{args.top_k}": report(scored, loo, thresholds)} if scored else {}),
            **({f"top_k_{args.surrogate_top_k}": many} if many else {}),
        },
        "examples": [
            {"q": i.question, "answer": i.text, "sentences": i.sentences, "gold": sorted(i.gold),
             "markers": sorted(i.markers), "drops": np.round(i.drops["leave_one_out"], 2).tolist()}
            for i in scored[:4]
        ],
        "meta": {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}",
                 "model": settings.models.default, "top_k": args.top_k, "seconds": round(seconds, 1)},
    }  # fmt: skip
    print(json.dumps(results, indent=2))
    if not scored:
        return
    r = results["with_rag"]
    baseline = f"{results['without_rag']['contains_answer']:.2f} without RAG -> " if without else ""
    main_set = results["citations"][f"top_k_{args.top_k}"]
    m, b = main_set["leave_one_out"]["configured"], main_set["markers_only"]
    g = main_set["leave_one_out"]["guesses_cite"]
    print(
        f"rag answers: contains-answer {baseline}{r['contains_answer']:.2f} with RAG "
        f"over {len(facts)} questions; sentence citations (top_k {args.top_k}): measured precision "
        f"{m['precision']:.2f} recall {m['recall']:.2f} (threshold {configured} nats; calibrated {calibrated}; "
        f"without the guess rule {g['precision']:.2f} / {g['recall']:.2f}) vs "
        f"markers only precision {b['precision']:.2f} recall {b['recall']:.2f}"
    )


if __name__ == "__main__":
    main()
