"""Decode against the machine's limit: the memory-bandwidth roofline of one decode step, fp32 and int8 base weights
side by side in the same run, and what int8 costs in quality.

Roofline: a decode step reads every base weight once (plus the KV cache), so tokens/s for one stream cannot exceed
measured read bandwidth / bytes per token. Measured here: read bandwidth (a sum over a 1 GiB tensor, the same
threads), the engine's one-stream decode (64 tokens after the prompt, greedy) and a batch of `--batch` streams, for
each weight format; one stream also with the compiled decode helpers switched off on the same engine (torch's ops
for the norms, rotary, attention and the MLP's product; `engine.native_decode`), run just before; and one stream
through a rank-8 adapter on all seven projections, with int8 both in one native call per step and layer by layer
(torch adds the adapter), paired on the same engine. Quality of int8 against the fp32 weights: greedy outputs on a
fixed prompt set (how many are identical, where the first difference falls) and perplexity on held-out text (the
project's own documentation, which the model never saw).

    python benchmarks/decode.py [--threads N] [--batch 8] [--tokens 64] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

PROMPTS = [
    "Tell me a story about a dragon who lives in the mountains.",
    "What is the capital of France?",
    "Explain photosynthesis in simple words.",
    "List three uses of copper.",
    "Write a haiku about the sea.",
    "How do I make a cup of tea?",
    "What causes the seasons on Earth?",
    "Give me a tip for learning a new language.",
    "Why is the sky blue?",
    "Describe a cat to someone who has never seen one.",
    "What is a prime number?",
    "Summarise the plot of Romeo and Juliet.",
    "How does a bicycle stay upright?",
    "What should I pack for a day of hiking?",
    "Explain what a database index is.",
    "Name two famous painters and one work by each.",
]
ROOT = Path(__file__).resolve().parent.parent
HELD_OUT = ["README.md", "docs/design.md", "docs/engine.md", "docs/attribution.md", "docs/ledger.md"]


def read_bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """GB/s of reading a large fp32 tensor (a sum: one read, no write), best of `repeats`."""
    torch.set_num_threads(threads)
    big = torch.ones(int(gib * (1 << 30) / 4))
    big.sum()
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        big.sum()
        best = min(best, time.perf_counter() - t)
    return big.numel() * 4 / best / 1e9


def step_bytes(model: Any, context: int) -> dict[str, int]:
    """Bytes one decode step reads: every linear weight (int8: weights + scales) and the KV cache at `context`."""
    from tally.engine.quant import Q8Linear

    fp32 = int8 = 0
    for module in model.modules():
        if isinstance(module, Q8Linear):
            int8 += module.q.numel() + module.scale.numel() * 4
            fp32 += module.q.numel() * 4
        elif isinstance(module, torch.nn.Linear):
            int8 += module.weight.numel() * 4
            fp32 += module.weight.numel() * 4
    cfg = model.config
    head = cfg.hidden_size // cfg.num_attention_heads
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * head * context * 4
    return {"fp32": fp32 + kv, "int8": int8 + kv, "kv": kv}


def engine_for(weights: str, threads: int, batch: int) -> Any:
    from tally.config import load_settings
    from tally.engine import EngineConfig
    from tally.engine.engine import build_engine, settings_kernel_dir

    settings = load_settings()
    config = EngineConfig(
        max_num_seqs=max(batch, 1), threads=threads, weights=weights,
        kernel_dir=settings_kernel_dir(settings),
    )  # fmt: skip
    return build_engine(settings, config)


def make_adapter(root: Path) -> Path:
    """One rank-8 PEFT adapter on all seven projections of the base model (random weights), as the serving
    benchmarks use."""
    import sys

    from tally.config import load_settings
    from tally.models import load_model, resolve_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import make_adapters

    settings = load_settings()
    base = load_model(resolve_model(settings.models.default, settings.models.cache_dir))
    return make_adapters(root, 1, base, seed=0)[0]


def one_stream(engine: Any, tokens: int, repeats: int, model: str | None = None) -> float:
    from tally.engine.sampling import SamplingParams

    prompt = engine.encode_chat([{"role": "user", "content": PROMPTS[0]}])
    engine.generate(prompt, SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True), model=model)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
        out = engine.generate(prompt, params, model=model)
        rates.append(out.completion_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def batched(engine: Any, batch: int, tokens: int) -> float:
    from tally.engine.sampling import SamplingParams

    engine.start()
    prompts = [engine.encode_chat([{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}]) for i in range(batch)]
    done: list[int] = []

    def run(p: list[int]) -> None:
        done.append(
            engine.generate(p, SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)).completion_tokens
        )

    start = time.perf_counter()
    workers = [threading.Thread(target=run, args=(p,)) for p in prompts]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(done) / (time.perf_counter() - start)


def greedy(engine: Any, tokens: int) -> list[list[int]]:
    from tally.engine.sampling import SamplingParams

    params = SamplingParams(max_tokens=tokens, temperature=0.0)
    return [engine.generate(engine.encode_chat([{"role": "user", "content": p}]), params).token_ids for p in PROMPTS]


def perplexity(model: Any, tokenizer: Any, window: int, limit: int) -> float:
    text = "\n\n".join((ROOT / name).read_text() for name in HELD_OUT)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][: window * limit]
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, window):
            chunk = torch.tensor(ids[start : start + window])[None]
            if chunk.shape[1] < 2:
                break
            logits = model(chunk).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, chunk[0, 1:], reduction="sum"))
            count += chunk.shape[1] - 1
    return math.exp(total / count)


def agreement(reference: list[list[int]], other: list[list[int]]) -> dict[str, Any]:
    firsts = []
    for a, b in zip(reference, other, strict=True):
        first = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        firsts.append(first)
    differing = [f for f in firsts if f is not None]
    return {
        "prompts": len(reference),
        "identical": len(reference) - len(differing),
        "first_difference_at": differing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--batch", type=int, default=8, help="streams decoded together in the batch measurement")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per stream")
    parser.add_argument("--repeats", type=int, default=3, help="one-stream runs per format (median reported)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats, a shorter perplexity text")
    args = parser.parse_args()
    if args.quick:
        args.repeats = 1
    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    bandwidth = read_bandwidth(args.threads)
    results: dict[str, Any] = {}
    outputs: dict[str, list[list[int]]] = {}
    adapter_dir = tempfile.TemporaryDirectory()
    adapter = make_adapter(Path(adapter_dir.name))
    for weights in ("fp32", "int8"):
        engine = engine_for(weights, args.threads, args.batch)
        engine.add_adapter("rank8", adapter)
        context = len(engine.encode_chat([{"role": "user", "content": PROMPTS[0]}])) + args.tokens // 2
        nbytes = step_bytes(engine.model, context)[weights]
        ops = engine.runner.ops
        engine.runner.ops = None  # the same engine with torch's ops for the small per-layer work
        torch_ops_rate = one_stream(engine, args.tokens, args.repeats)
        engine.runner.ops = ops
        rate = one_stream(engine, args.tokens, args.repeats)
        # one stream through the adapter: with int8, every layer in one call with the adapter added in C, and the
        # same engine layer by layer (torch adds the adapter) just before
        decoder = engine.runner.decoder
        adapter_layers_rate = None  # fp32 has no one-call step: its adapter stream runs layer by layer only
        if decoder is not None:
            engine.runner.decoder = None
            adapter_layers_rate = round(one_stream(engine, args.tokens, args.repeats, "rank8"), 1)
            engine.runner.decoder = decoder
        adapter_rate = one_stream(engine, args.tokens, args.repeats, "rank8")
        results[weights] = {
            "bytes_per_token": nbytes,
            "roofline_tokens_per_s": round(bandwidth * 1e9 / nbytes, 1),
            "one_stream_tokens_per_s": round(rate, 1),
            "fraction_of_roofline": round(rate * nbytes / (bandwidth * 1e9), 3),
            "native_decode": ops is not None,
            "one_stream_torch_ops_tokens_per_s": round(torch_ops_rate, 1),
            "native_decode_speedup": round(rate / torch_ops_rate, 2),
            "one_step_call": decoder is not None,
            "adapter_one_stream_tokens_per_s": round(adapter_rate, 1),
            "adapter_one_stream_layer_by_layer_tokens_per_s": adapter_layers_rate,
            "adapter_one_step_call_speedup": (
                round(adapter_rate / adapter_layers_rate, 2) if adapter_layers_rate else None
            ),
            f"batch_{args.batch}_tokens_per_s": round(batched(engine, args.batch, args.tokens), 1),
        }
        outputs[weights] = greedy(engine, args.tokens)
        results[weights]["perplexity"] = round(
            perplexity(engine.model, engine.tokenizer, 256, 8 if args.quick else 40), 4
        )
        engine.stop()
        del engine
    adapter_dir.cleanup()
    fp32, int8 = results["fp32"], results["int8"]
    report = {
        "benchmark": "decode",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu_name(),
            "cores": os.cpu_count(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_before": [round(x, 2) for x in load],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "read_bandwidth_gb_s": round(bandwidth, 1),
        "config": {"tokens": args.tokens, "batch": args.batch, "repeats": args.repeats},
        "results": results,
        "int8_vs_fp32": {
            "one_stream_speedup": round(int8["one_stream_tokens_per_s"] / fp32["one_stream_tokens_per_s"], 2),
            "batch_speedup": round(
                int8[f"batch_{args.batch}_tokens_per_s"] / fp32[f"batch_{args.batch}_tokens_per_s"], 2
            ),
            "perplexity_delta": round(int8["perplexity"] - fp32["perplexity"], 4),
            "perplexity_ratio": round(int8["perplexity"] / fp32["perplexity"], 4),
            "greedy": agreement(outputs["fp32"], outputs["int8"]),
        },
    }
    print(json.dumps(report, indent=2))
    cmp = report["int8_vs_fp32"]
    print(
        f"decode one stream: fp32 {fp32['one_stream_tokens_per_s']} tok/s "
        f"({fp32['fraction_of_roofline']:.0%} of its roofline {fp32['roofline_tokens_per_s']}), int8 "
        f"{int8['one_stream_tokens_per_s']} tok/s ({int8['fraction_of_roofline']:.0%} of "
        f"{int8['roofline_tokens_per_s']}), {cmp['one_stream_speedup']}x; compiled decode helpers "
        f"{fp32['native_decode_speedup']}x / {int8['native_decode_speedup']}x over torch's ops; batch {args.batch} "
        f"{cmp['batch_speedup']}x; int8 through a rank-8 adapter {int8['adapter_one_stream_tokens_per_s']} tok/s "
        f"({int8['adapter_one_step_call_speedup']}x the layer-by-layer rate); "
        f"perplexity {fp32['perplexity']} -> {int8['perplexity']}; greedy identical "
        f"{cmp['greedy']['identical']}/{cmp['greedy']['prompts']}"
    )


def _cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
