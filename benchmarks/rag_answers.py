"""Answers with and without RAG on a labelled question set built from a datanet, with the real base model.

Builds a datanet of facts about made-up people (which the base model cannot know), asks paraphrased questions
through the base model alone and with retrieval (top_k sources, numbered in the prompt), and reports exact match,
"contains the answer", citation precision (a cited source holds the fact) and citation recall. Prints one JSON
document, then one summary line.

    python benchmarks/rag_answers.py [--people 20] [--top-k 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tally.config import load_settings
from tally.datanets import contribute, service, snapshots
from tally.engine import SamplingParams, build_engine
from tally.identity import Principal, create_account
from tally.ledger import open_ledger
from tally.rag import RagSettings, build_rag_messages, postprocess_citations, retrieve
from tally.rag.embed import load_embedder
from tally.rag.evaluate import answer_metrics, make_facts
from tally.rag.index import IndexCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    args = parser.parse_args()
    facts = make_facts(args.people, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(data_dir=Path(tmp))
        from tally.store import open_store

        store = open_store(settings)
        ledger = open_ledger(settings, store)
        data = "".join(json.dumps(f.row) + "\n" for f in facts).encode()
        with store.transaction() as s:
            who = Principal.of(create_account(s, ledger, "eval", ["owner", "contributor"])[0])
            service.create_datanet(s, ledger, who, "people", kind="instruction", license="CC-BY-4.0", uses=["rag"],
                                   policy="open", max_upload_bytes=1 << 24, max_rows_per_day=100_000)  # fmt: skip
            contribute.contribute(s, ledger, who, "people", data, "people.jsonl", settings=settings.datanets,
                                  chain_id=settings.chain_id)  # fmt: skip
            snapshots.create_snapshot(s, ledger, who, "people")
        rag_settings = RagSettings.from_settings(settings)
        embedder, indexes = load_embedder(rag_settings), IndexCache()  # held across questions, as a server does
        engine = build_engine(settings).start()
        params = SamplingParams(max_tokens=args.max_tokens, temperature=0)
        plain: list[dict[str, Any]] = []
        rag: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        from tally.datanets.formats import row_hash

        for fact in facts:
            question = fact.questions[0]
            answer = engine.generate(engine.encode_chat([{"role": "user", "content": question}]), params).text
            plain.append({"answer": answer, "gold": fact.value})
            with store.transaction() as s:
                chunks = retrieve(
                    s, ledger, who, ["people"], question, args.top_k, settings=rag_settings, refresh=True,
                    embedder=embedder, indexes=indexes,
                )  # fmt: skip
            raw = engine.generate(engine.encode_chat(build_rag_messages(question, chunks)), params).text
            text, citations = postprocess_citations(raw, chunks)
            rag.append({"answer": text, "gold": fact.value, "citations": citations, "relevant": [row_hash(fact.row)]})
            print(f"  {len(rag)}/{len(facts)} {question!r}: {text.strip()[:70]!r}", file=sys.stderr, flush=True)
        seconds = time.perf_counter() - t0
        engine.stop()
        store.dispose()
    results = {
        "questions": len(facts),
        "without_rag": answer_metrics(plain),
        "with_rag": answer_metrics(rag),
        "examples": [
            {"q": f.questions[0], "gold": f.value, "rag_answer": r["answer"]}
            for f, r in zip(facts[:3], rag[:3], strict=True)
        ],
        "meta": {"date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": f"{platform.machine()}",
                 "model": settings.models.default, "top_k": args.top_k, "seconds": round(seconds, 1)},
    }  # fmt: skip
    print(json.dumps(results, indent=2))
    w, r = results["without_rag"], results["with_rag"]
    print(
        f"rag answers: contains-answer {w['contains_answer']:.2f} without RAG -> {r['contains_answer']:.2f} with RAG "
        f"(exact match {w['exact_match']:.2f} -> {r['exact_match']:.2f}); citation precision "
        f"{r['citation_precision']:.2f}, recall {r['citation_recall']:.2f} over {len(facts)} questions"
    )


if __name__ == "__main__":
    main()
