"""Attribution cost on the real base model: what `fast` and `full` add to a 64-token answer, and index scoring.

Measured in one run, on one machine state:
  generate      the engine answering with a rank-16 adapter (all seven projections), exactly 64 new tokens, with
                the base weights `--weights` gives (default auto: the server's default, int8 on an AVX2 CPU) and,
                for comparison, with fp32; as the server answers for `fast` attribution, the engine keeps the hidden
                states entering the top `fast_gradient_layers` layers (the same answer without keeping them is
                timed in turn with it)
  fast / full   attributing that answer (spans over an empty span index, representation, gradient cosine; full
                takes every layer's gradient and adds DataInf) against an index of 10k rows, median of repeats,
                once the adapter's null is calibrated (its first `null_probes` answers also run the random twin:
                timed separately)
  backward      one forward + backward of the answer's loss through the adapter (the query's unit of work), and
                `fast` mode's query (the gradient of the top `fast_gradient_layers` layers only, from the engine's
                states and through the whole forward), and the forward alone (no gradients); `fast` is also timed
                without the engine's states and with the gradient of every layer (`fast_gradient_layers = 0`).
                These and `full` are timed in turn, once each per repeat
  scoring       the index scorers alone against 10k and 100k rows (4096 projected dims, 3 epoch checkpoints +
                the final pass, 576-dim representation)
  rag           a RAG answer of exactly 64 tokens from the base model with 3, 8 and 16 retrieved chunks: its
                generation, the context signal (leave-one-out up to 8 chunks, the 32-ablation surrogate above) and the
                sentence citations computed from that pass (token offsets, sentence drops, the Lasso fits); beside
                the context pass, the same prompts scored by the earlier plan (one prefix shared by all, the rest of
                every prompt batched: `reuse_prefixes=False`), timed in alternation with it, and the token positions
                each plan runs through the model
The adapter is randomly initialised and the index rows are random vectors of the right shapes: cost does not
depend on what the numbers are. Goals: fast <= 20% of the answer's latency; full <= one backward + 50 ms at 10k
rows; scoring 100k rows <= 50 ms. Prints one JSON document and a one-line summary (`--rag-only`: the rag part).
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DIMS = 4096
CHECKPOINTS = ("epoch_1", "epoch_2", "epoch_3", "final")


def _median_ms(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return round(statistics.median(times), 2)


def make_adapter(model_dir: Path, out: Path, rows: int) -> Path:
    """A rank-16 PEFT adapter and a synthetic training-data index of `rows` rows in its projection."""
    from peft import LoraConfig, get_peft_model

    from tally.influence import Projector
    from tally.models import load_model

    torch.manual_seed(0)
    config = LoraConfig(r=16, lora_alpha=32, target_modules=PROJ, init_lora_weights=False, task_type="CAUSAL_LM")
    peft = get_peft_model(load_model(model_dir), config)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_" in name:
                p.mul_(0.01)
    peft.save_pretrained(str(out))
    projector = Projector.for_model(peft, DIMS, 0)
    hidden = int(peft.get_base_model().config.hidden_size)
    write_index(out, projector.describe(), rows, hidden)
    return out


def write_index(out: Path, projection: dict[str, Any], rows: int, hidden: int) -> None:
    from tally.influence import save_index

    gen = torch.Generator().manual_seed(1)
    tensors = {name: torch.randn(rows, DIMS, generator=gen, dtype=torch.float16) for name in CHECKPOINTS}
    tensors["hidden_mean"] = torch.randn(rows, hidden, generator=gen, dtype=torch.float16)
    examples = [
        {"row_hash": f"{i:064x}", "datanet": "bench", "snapshot": "s", "contribution": f"c{i % 500}",
         "contributor": f"0x{i % 50:040x}", "target_tokens": 20}
        for i in range(rows)
    ]  # fmt: skip
    meta = {
        "projection": projection,
        "checkpoints": [{"name": name} for name in CHECKPOINTS],
        "representation": {"tensor": "hidden_mean", "pooling": "mean"},
        "examples": examples,
    }
    save_index(out / "influence", tensors, meta)


def time_scorer(scorer: Any, repeats: int) -> dict[str, float]:
    q, h = torch.randn(DIMS), torch.randn(576)
    scorer.datainf(q)  # prepares the per-layer matrices once
    return {
        "fast_ms": _median_ms(lambda: (scorer.cosine(q), scorer.representation(h)), repeats),
        "cosine_ms": _median_ms(lambda: scorer.cosine(q), repeats),
        "representation_ms": _median_ms(lambda: scorer.representation(h), repeats),
        "datainf_ms": _median_ms(lambda: scorer.datainf(q), repeats),
    }


RAG_FACTS = [
    "{n} was born in the harbour town of Korvath in 1961 and moved inland as a child.",
    "{n} works as a glassblower and sells bowls and lamps at the winter fair.",
    "{n} keeps a tortoise called Brass that is older than the house it lives in.",
    "{n} plays the oboe in the Drennick town band on Sundays.",
]


def rag_costs(
    model_dir: Path,
    settings: Any,
    repeats: int,
    sizes: tuple[int, ...] = (3, 8, 16),
    earlier: bool = True,
    weights: str = "auto",
) -> dict[str, Any]:
    """Per chunk count: the 64-token RAG answer, the context pass (and the earlier plan's, if `earlier`), and the
    sentence citations on top of it."""
    from tally.attribution.citations import citations_from, sentence_drops
    from tally.attribution.context import (
        context_drops,
        context_surrogate,
        forward_tokens,
        masked_logprobs,
        masked_prompts,
    )
    from tally.engine import Engine, EngineConfig, SamplingParams
    from tally.engine.engine import settings_kernel_dir
    from tally.models import load_model, load_tokenizer
    from tally.rag import build_rag_messages

    @dataclass(frozen=True)
    class Chunk:
        text: str
        row_hash: str
        datanet: str = "bench"
        snapshot: str = "s"
        contribution: str = "c"
        contributor: str = "0x0"

    cfg = settings.attribution
    tok = load_tokenizer(model_dir)
    config = EngineConfig(device="cpu", max_model_len=2048, weights=weights, kernel_dir=settings_kernel_dir(settings))
    engine = Engine(load_model(model_dir), tok, "base", config).start()
    model = load_model(model_dir).eval()
    names = [f"Person {chr(65 + i)}" for i in range(26)]
    question = f"Where was {names[1]} born, and what does {names[1]} do?"
    out: dict[str, Any] = {}
    try:
        for k in sizes:
            chunks = [Chunk(RAG_FACTS[i % len(RAG_FACTS)].format(n=names[i // 2 % len(names)]), f"{i:064x}")
                      for i in range(k)]  # fmt: skip
            prompt = engine.encode_chat(build_rag_messages(question, chunks))
            params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
            engine.generate(prompt, params)  # warm-up
            answer: list[int] = []

            def generate() -> None:
                answer[:] = engine.generate(prompt, params).token_ids  # noqa: B023 - run at once, in this iteration

            generate_ms = _median_ms(generate, repeats)
            surrogate = k > cfg.citation_loo_max_chunks

            def context(chunks: list[Chunk] = chunks, answer: list[int] = answer, many: bool = surrogate) -> Any:
                if many:
                    return context_surrogate(model, tok, question, chunks, answer, ablations=cfg.citation_ablations,
                                             alpha=cfg.citation_lasso_alpha, seed=cfg.citation_seed)  # fmt: skip
                return context_drops(model, tok, question, chunks, answer)

            ctx = context()
            assert ctx.masks is not None
            prompts = masked_prompts(tok, question, chunks, ctx.masks)
            tokens = forward_tokens(prompts, len(answer))
            earlier_tokens = forward_tokens(prompts, len(answer), reuse_prefixes=False)

            def earlier_plan(chunks: list[Chunk] = chunks, answer: list[int] = answer, masks: Any = ctx.masks) -> Any:
                return masked_logprobs(model, tok, question, chunks, answer, masks, reuse_prefixes=False)

            # alternated, so both plans see the same spread of machine states
            context_times, earlier_times = [], []
            for _ in range(repeats):
                context_times.append(_median_ms(context, 1))
                if earlier:
                    earlier_times.append(_median_ms(earlier_plan, 1))
            context_ms = round(statistics.median(context_times), 2)
            earlier_ms = round(statistics.median(earlier_times), 2) if earlier else None

            def cite(chunks: list[Chunk] = chunks, answer: list[int] = answer, ctx: Any = ctx) -> None:
                per = sentence_drops(
                    tok, answer, len(chunks), ctx, cfg.citation_lasso_alpha, guess_nats=cfg.citation_guess_nats
                )
                citations_from(per, per.text, chunks, cfg.citation_min_drop)

            citations_ms = _median_ms(cite, repeats)
            out[str(k)] = {
                "method": ctx.method, "scored_prompts": int(ctx.masks.shape[0]) if ctx.masks is not None else 0,
                "weights": engine.weights,
                "prompt_tokens": len(prompt), "answer_tokens": len(answer), "generate_ms": generate_ms,
                "context_ms": context_ms, "citations_ms": citations_ms,
                "context_over_generate": round(context_ms / generate_ms, 3),
                "context_tokens": tokens, "earlier_plan_tokens": earlier_tokens, "earlier_plan_ms": earlier_ms,
                "earlier_plan_over_generate": round(earlier_ms / generate_ms, 3) if earlier_ms else None,
                "context_times_ms": context_times, "earlier_plan_times_ms": earlier_times,
                "citations_over_generate": round(citations_ms / generate_ms, 4),
            }  # fmt: skip
            print(f"rag k={k}: {out[str(k)]}", file=sys.stderr, flush=True)
    finally:
        engine.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--big-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rag-only", action="store_true", help="only the RAG context and citation costs")
    parser.add_argument("--rag-sizes", default="3,8,16", help="retrieved chunk counts timed (comma-separated)")
    parser.add_argument(
        "--no-earlier-plan", action="store_true", help="do not time the earlier context plan beside the current one"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch intra-op threads for everything timed (0: torch's default); one "
        "thread on a machine whose other core is busy, where two wait on each other at every operation",
    )
    parser.add_argument(
        "--weights",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="the engine's base weights for the answers timed (auto: the server's default); the full run also times "
        "the same answer with fp32 weights",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    tmp = Path(tempfile.mkdtemp(prefix="tally-attr-latency-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)  # adapter, data dir and two indexes: gigabytes
    os.environ["TALLY_DATA_DIR"] = str(tmp / "data")
    from tally.attribution.service import Answer, Attributor
    from tally.config import load_settings
    from tally.engine import Engine, EngineConfig, SamplingParams
    from tally.engine.engine import settings_kernel_dir
    from tally.engine.files import hash_adapter
    from tally.influence import IndexScorer, load_index
    from tally.models import load_model, load_tokenizer, resolve_model
    from tally.store import open_store

    settings = load_settings()
    store = open_store(settings)
    model_dir = resolve_model(args.model, settings.models.cache_dir)
    sizes = tuple(int(k) for k in args.rag_sizes.split(","))
    if args.rag_only:
        rag = rag_costs(model_dir, settings, args.repeats, sizes, not args.no_earlier_plan, args.weights)
        print(json.dumps({"benchmark": "attribution_latency", "machine": f"{platform.machine()}, {os.cpu_count()} "
                          f"cpus, torch {torch.__version__}", "threads": torch.get_num_threads(),
                          "load_average": os.getloadavg(), "model": args.model, "rag": rag}, indent=1))  # fmt: skip
        summary = [
            f"k={k} answer {r['generate_ms']:.0f} ms, context +{r['context_ms']:.0f} ms "
            f"({r['context_over_generate']:.0%}, {r['context_tokens']} tokens; earlier plan "
            f"{r['earlier_plan_ms'] or 0:.0f} ms, {r['earlier_plan_tokens']} tokens), "
            f"citations +{r['citations_ms']:.1f} ms"
            for k, r in rag.items()
        ]
        print("attribution_latency (rag): " + "; ".join(summary))
        return
    print("building the adapter and a 10k-row index ...", file=sys.stderr)
    adapter = make_adapter(model_dir, tmp / "adapter", args.rows)
    tok = load_tokenizer(model_dir)
    messages = [{"role": "user", "content": "Describe the town of Korvath and its glassblowers."}]
    layers = settings.attribution.fast_gradient_layers
    # as the server answers for `fast` attribution: the engine keeps the states entering the top layers
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True, keep_states=True)
    plain = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    prompt: list[int] = []
    answer_ids: list[int] = []
    kept: dict[str, Any] = {}  # the attributed answer's states and the layer they enter
    generate_ms: dict[str, float] = {}  # by the weights that ran; the first is the answer attributed below
    without_states_ms = 0.0
    for weights in dict.fromkeys((args.weights, "fp32")):
        config = EngineConfig(
            device="cpu", weights=weights, kernel_dir=settings_kernel_dir(settings), states_from_top=layers
        )
        engine = Engine(load_model(model_dir), tok, args.model, config).start()
        engine.add_adapter("bench", adapter)
        prompt = engine.encode_chat(messages)
        engine.generate(prompt, params, "bench")  # warm-up: loads the adapter into a slot
        if engine.weights not in generate_ms:
            print(f"timing generation ({engine.weights} weights) ...", file=sys.stderr)
            keep = not generate_ms

            def generate(engine: Any = engine, keep: bool = keep, prompt: list[int] = prompt) -> None:
                out = engine.generate(prompt, params, "bench")
                if keep:
                    answer_ids[:] = out.token_ids
                    kept.update(states=out.states, layer=engine.states_layer)

            if keep:  # with and without the states, in turn
                pair = {"with": generate, "without": lambda e=engine, p=prompt: e.generate(p, plain, "bench")}
                runs: dict[str, list[float]] = {"with": [], "without": []}
                for repeat in range(args.repeats):  # which goes first alternates: no order bias
                    for name in ("with", "without") if repeat % 2 == 0 else ("without", "with"):
                        runs[name].append(_median_ms(pair[name], 1))
                generate_ms[engine.weights] = statistics.median(runs["with"])
                without_states_ms = statistics.median(runs["without"])
            else:
                generate_ms[engine.weights] = _median_ms(generate, args.repeats)
        engine.stop()
        if engine.weights == "fp32":  # the served weights were fp32 already: nothing to compare with
            break
    served_weights, served_ms = next(iter(generate_ms.items()))
    attributor = Attributor(settings, store, model_dir, args.model)
    digest = hash_adapter(adapter)
    counter = iter(range(10**6))

    def attribute(mode: str, states: bool = True) -> None:
        answer = Answer(f"bench-{next(counter)}", "bench", prompt, answer_ids, adapter, digest)
        if states:
            answer.states, answer.states_layer = kept["states"], kept["layer"]
        attributor.attribute(answer, mode)  # type: ignore[arg-type]

    attribute("full")  # warm-up: loads the attribution model, the adapter, the index and DataInf's matrices
    probes = settings.attribution.null_probes
    print("timing attribution while the null is calibrated ...", file=sys.stderr)
    # fast mode's top-layer gradient has a null of its own; full's is calibrated too before either is timed
    calibrating_ms = _median_ms(lambda: attribute("fast"), probes)
    for _ in range(probes - 1):
        attribute("full")
    print("timing attribution ...", file=sys.stderr)
    top_layers = attributor.cfg
    every_layer = top_layers.model_copy(update={"fast_gradient_layers": 0})  # `fast` as before: its null is full's
    projection = json.loads((adapter / "influence" / "index.json").read_text())["projection"]
    query = attributor.query_model.signals
    ids = torch.tensor([prompt + answer_ids])

    def with_cfg(cfg: Any, mode: str, states: bool = True) -> Any:
        def run() -> None:
            attributor.cfg = cfg
            attribute(mode, states)
            attributor.cfg = top_layers

        return run

    from_states = (kept["layer"], kept["states"])
    # every timing in turn, once per repeat, so each ratio is taken on the same machine state
    timed: dict[str, Any] = {
        "fast": with_cfg(top_layers, "fast"),
        "fast_whole_forward": with_cfg(top_layers, "fast", states=False),
        "fast_every_layer": with_cfg(every_layer, "fast"),
        "full": with_cfg(top_layers, "full"),
        "backward": lambda: query(digest, adapter, projection, prompt, answer_ids),
        "top_layers_query": lambda: query(digest, adapter, projection, prompt, answer_ids, layers=layers),
        "top_layers_from_states": lambda: query(
            digest, adapter, projection, prompt, answer_ids, layers=layers, states=from_states
        ),
        # the forward the top layers' inputs need, through the adapter, without gradients
        "forward": lambda: attributor.query_model.run(
            digest, adapter, lambda model: model(input_ids=ids, logits_to_keep=len(answer_ids) + 1)
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(args.repeats):
        for name, fn in timed.items():
            times[name].append(_median_ms(fn, 1))
    median = {name: statistics.median(values) for name, values in times.items()}
    fast_ms, fast_every_layer_ms, full_ms = median["fast"], median["fast_every_layer"], median["full"]
    backward_ms, top_layers_ms, forward_ms = median["backward"], median["top_layers_query"], median["forward"]
    whole_forward_ms, from_states_ms = median["fast_whole_forward"], median["top_layers_from_states"]
    scoring: dict[str, Any] = {}
    for rows in (args.rows, args.big_rows):
        print(f"timing scoring against {rows} rows ...", file=sys.stderr)
        write_index(tmp / f"idx-{rows}", projection, rows, 576)
        scoring[str(rows)] = time_scorer(IndexScorer(load_index(tmp / f"idx-{rows}" / "influence")), args.repeats)
    rag = rag_costs(model_dir, settings, args.repeats, sizes, not args.no_earlier_plan, args.weights)
    result = {
        "benchmark": "attribution_latency", "rag": rag,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "model": args.model, "answer_tokens": len(answer_ids), "prompt_tokens": len(prompt), "index_rows": args.rows,
        "weights": served_weights, "generate_ms": served_ms, "generate_ms_by_weights": generate_ms,
        "generate_without_states_ms": without_states_ms, "states_layer": kept["layer"],
        "keeping_states_over_generate": round(served_ms / without_states_ms, 3),
        "fast_whole_forward_ms": whole_forward_ms, "top_layers_from_states_ms": from_states_ms,
        "fast_over_fast_whole_forward": round(fast_ms / whole_forward_ms, 3),
        "fast_ms": fast_ms, "full_ms": full_ms, "backward_ms": backward_ms, "fast_gradient_layers": layers,
        "fast_every_layer_ms": fast_every_layer_ms, "top_layers_query_ms": top_layers_ms, "forward_ms": forward_ms,
        "forward_over_generate": round(forward_ms / served_ms, 3),
        "fast_over_fast_every_layer": round(fast_ms / fast_every_layer_ms, 3),
        "fast_while_calibrating_null_ms": calibrating_ms, "null_probes": settings.attribution.null_probes,
        "fast_over_generate": round(fast_ms / served_ms, 3),
        "fast_over_generate_by_weights": {w: round(fast_ms / ms, 3) for w, ms in generate_ms.items()},
        "full_minus_backward_ms": round(full_ms - backward_ms, 2),
        "scoring": scoring,
        "goals": {
            "fast_le_20pct": fast_ms / served_ms <= 0.2,
            "full_le_backward_plus_50ms": full_ms <= backward_ms + 50,
            "scoring_100k_le_50ms": scoring[str(args.big_rows)]["fast_ms"] <= 50,
        },
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    print(
        f"attribution_latency: 64-token answer {served_ms:.0f} ms ({served_weights}); fast +{fast_ms:.0f} ms "
        f"("
        + ", ".join(f"{fast_ms / ms:.0%} of the {w} answer's {ms:.0f} ms" for w, ms in generate_ms.items())
        + f"; from the engine's states, kept at {served_ms / without_states_ms - 1:+.1%} of the answer; through "
        f"the whole forward {whole_forward_ms:.0f} ms, with every layer's gradient {fast_every_layer_ms:.0f} ms; "
        f"top {layers} layers' query {from_states_ms:.0f} ms from the states, {top_layers_ms:.0f} ms whole, the "
        f"forward alone {forward_ms:.0f} ms); "
        f"full {full_ms:.0f} ms vs one backward {backward_ms:.0f} ms; "
        f"scoring {args.big_rows // 1000}k rows {scoring[str(args.big_rows)]['fast_ms']:.0f} ms (fast), "
        f"{scoring[str(args.big_rows)]['datainf_ms']:.0f} ms (DataInf)"
    )


if __name__ == "__main__":
    main()
