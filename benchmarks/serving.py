"""Multi-adapter serving benchmark (S-LoRA-like workload) on the real base model.

Workload: Poisson arrivals, adapter popularity power-law (P(adapter k) ~ k^-alpha), prompt and output lengths drawn
uniformly from ranges, rank-8 adapters on all seven projections, 1 / 10 / 100 / 1000 adapters. Side by side in the
same run, on the same requests:

  engine        the tally engine (continuous batching, multi-LoRA slots)
  engine_base   the tally engine serving every request with the base model alone (the ceiling)
  peft_single   PEFT, one request at a time, `set_adapter` per request (HF generate)
  peft_mixed    PEFT, static batches of up to 32 arrived requests with `adapter_names=[...]` (HF generate, padded)

PEFT runs on a virtual clock (service times measured, arrivals simulated) so it never idles; it gets its adapters
pre-loaded (load time not charged) and only those its requests use (all 1000 would need ~10 GB in PEFT).

Prints one JSON document and a one-line summary. `--quick` runs a reduced grid in a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import math
import os
import platform
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK = 8


# --- memory ----------------------------------------------------------------------------------------------------------
def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss() -> int:
    return _status("VmRSS")


def reset_peak() -> None:
    """Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak() -> int:
    return _status("VmHWM")


# --- adapters --------------------------------------------------------------------------------------------------------
def make_adapters(root: Path, n: int, model: Any, seed: int) -> list[Path]:
    """n rank-8 PEFT directories on all seven projections. The first is saved by PEFT itself; the others copy its
    config and key names with fresh random tensors (PEFT's get_peft_model per adapter would take ~1 s each)."""
    from peft import LoraConfig, get_peft_model

    root.mkdir(parents=True, exist_ok=True)
    template = root / "a0000"
    if not (template / "adapter_model.safetensors").exists():
        torch.manual_seed(seed)
        cfg = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=list(PROJ), init_lora_weights=False)
        pm = get_peft_model(copy.deepcopy(model), cfg)
        pm.save_pretrained(str(template))
        del pm
    from safetensors.torch import load_file

    shapes = {k: v.shape for k, v in load_file(str(template / "adapter_model.safetensors")).items()}
    config = (template / "adapter_config.json").read_text()
    paths = [template]
    gen = torch.Generator().manual_seed(seed)
    for i in range(1, n):
        d = root / f"a{i:04d}"
        paths.append(d)
        if (d / "adapter_model.safetensors").exists():
            continue
        d.mkdir(exist_ok=True)
        tensors = {}
        for k, shape in shapes.items():
            scale = 1.0 / math.sqrt(shape[1]) if "lora_A" in k else 0.02
            tensors[k] = torch.randn(shape, generator=gen) * scale
        save_file(tensors, str(d / "adapter_model.safetensors"))
        (d / "adapter_config.json").write_text(config)
    return paths


# --- workload --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    arrival: float
    adapter: int | None  # index into the adapter list; None = base model
    prompt: list[int]
    output_len: int


def workload(
    n_req: int,
    n_adapters: int,
    alpha: float,
    rate: float,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    vocab: int,
    seed: int,
) -> list[Request]:
    rng = random.Random(seed)
    weights = [1.0 / (k + 1) ** alpha for k in range(n_adapters)]
    t = 0.0
    out = []
    for _ in range(n_req):
        t += rng.expovariate(rate)
        adapter = rng.choices(range(n_adapters), weights)[0] if n_adapters else None
        prompt = [rng.randrange(100, vocab - 100) for _ in range(rng.randint(*prompt_range))]
        out.append(Request(t, adapter, prompt, rng.randint(*output_range)))
    return out


def summarize(
    name: str, reqs: list[Request], ttft: list[float], tpot: list[float], makespan: float, cpu_s: float, **extra: Any
) -> dict[str, Any]:
    tokens = sum(r.output_len for r in reqs)

    def pct(xs: list[float], q: float) -> float | None:
        if not xs:
            return None
        xs = sorted(xs)
        return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)

    return {
        "system": name,
        "requests": len(reqs),
        "output_tokens": tokens,
        "makespan_s": round(makespan, 3),
        "tokens_per_s": round(tokens / makespan, 2),
        "cpu_s": round(cpu_s, 2),
        "tokens_per_cpu_s": round(tokens / cpu_s, 2),  # robust to other processes sharing the cores
        "requests_per_s": round(len(reqs) / makespan, 3),
        "ttft_p50_ms": pct(ttft, 0.5),
        "ttft_p99_ms": pct(ttft, 0.99),
        "tpot_p50_ms": pct(tpot, 0.5),
        "tpot_p99_ms": pct(tpot, 0.99),
        **extra,
    }


# --- the engine ------------------------------------------------------------------------------------------------------
def run_engine(engine: Any, reqs: list[Request], names: list[str], base_only: bool = False) -> dict[str, Any]:
    from tally.engine import SamplingParams

    engine.start()
    done = threading.Event()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    submitted: dict[int, float] = {}
    remaining = [len(reqs)]
    lock = threading.Lock()

    def sink_for(i: int) -> Any:
        def sink(out: Any) -> None:
            now = time.perf_counter()
            if out.token_ids and i not in first:
                first[i] = now
            if out.finish_reason is not None:
                last[i] = now
                with lock:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

        return sink

    reset_peak()
    cpu0 = time.process_time()
    start = time.perf_counter()
    for i, r in enumerate(reqs):
        delay = start + r.arrival - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        submitted[i] = time.perf_counter()
        model = engine.model_name if base_only or r.adapter is None else names[r.adapter]
        params = SamplingParams(max_tokens=r.output_len, temperature=0.0, ignore_eos=True)
        engine.submit(r.prompt, params, sink_for(i), model=model)
    done.wait()
    end = time.perf_counter()
    ttft = [first[i] - submitted[i] for i in range(len(reqs))]
    tpot = [(last[i] - first[i]) / (r.output_len - 1) for i, r in enumerate(reqs) if r.output_len > 1]
    return summarize(
        "engine_base" if base_only else "engine",
        reqs,
        ttft,
        tpot,
        end - start - reqs[0].arrival,
        time.process_time() - cpu0,
        peak_rss_mb=round(peak() / 2**20, 1),
    )


# --- PEFT baselines --------------------------------------------------------------------------------------------------
class _Stamp:
    """A generate() streamer that records when each new token arrives (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def put(self, value: Any) -> None:
        self.times.append(time.perf_counter())

    def end(self) -> None:
        pass


def peft_model(base: Any, paths: list[Path], used: set[int]) -> tuple[Any, float]:
    from peft import PeftModel

    t = time.perf_counter()
    order = sorted(used)
    model = PeftModel.from_pretrained(copy.deepcopy(base), str(paths[order[0]]), adapter_name=f"a{order[0]}")
    for i in order[1:]:
        model.load_adapter(str(paths[i]), adapter_name=f"a{i}")
    model.eval()
    model.base_model.model.generation_config.eos_token_id = None  # generate exactly output_len tokens
    model.base_model.model.generation_config.pad_token_id = 0
    return model, time.perf_counter() - t


@torch.inference_mode()
def run_peft_single(model: Any, reqs: list[Request]) -> dict[str, Any]:
    clock = reqs[0].arrival
    cpu0 = time.process_time()
    ttft, tpot = [], []
    for r in reqs:
        clock = max(clock, r.arrival)
        if r.adapter is None:
            ctx: Any = model.disable_adapter()
        else:
            model.set_adapter(f"a{r.adapter}")
            ctx = contextlib.nullcontext()
        stamp = _Stamp()
        t0 = time.perf_counter()
        with ctx:
            model.generate(
                input_ids=torch.tensor([r.prompt]),
                attention_mask=torch.ones(1, len(r.prompt), dtype=torch.long),
                max_new_tokens=r.output_len,
                do_sample=False,
                streamer=stamp,
            )
        t1 = time.perf_counter()
        first = stamp.times[1] - t0 if len(stamp.times) > 1 else t1 - t0
        ttft.append(clock + first - r.arrival)
        if r.output_len > 1:
            tpot.append((t1 - t0 - first) / (r.output_len - 1))
        clock += t1 - t0
    return summarize("peft_single", reqs, ttft, tpot, clock - reqs[0].arrival, time.process_time() - cpu0)


@torch.inference_mode()
def run_peft_mixed(model: Any, reqs: list[Request], batch: int = 32) -> dict[str, Any]:
    clock = reqs[0].arrival
    cpu0 = time.process_time()
    ttft: list[float] = [0.0] * len(reqs)
    tpot: list[float] = []
    i = 0
    while i < len(reqs):
        clock = max(clock, reqs[i].arrival)
        j = i
        while j < len(reqs) and j - i < batch and reqs[j].arrival <= clock:
            j += 1
        group = reqs[i:j]
        width = max(len(r.prompt) for r in group)
        ids = torch.zeros(len(group), width, dtype=torch.long)
        mask = torch.zeros(len(group), width, dtype=torch.long)
        for k, r in enumerate(group):  # left padding
            ids[k, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[k, width - len(r.prompt) :] = 1
        names = ["__base__" if r.adapter is None else f"a{r.adapter}" for r in group]
        n_new = max(r.output_len for r in group)  # static batch: everyone runs to the longest output
        stamp = _Stamp()
        t0 = time.perf_counter()
        model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=n_new,
            do_sample=False,
            adapter_names=names,
            streamer=stamp,
        )
        t1 = time.perf_counter()
        token_times = [t - t0 for t in stamp.times[1:]] or [t1 - t0]
        for k, r in enumerate(group):
            ttft[i + k] = clock + token_times[0] - r.arrival
            if r.output_len > 1:
                done_at = token_times[min(r.output_len, len(token_times)) - 1]
                tpot.append((done_at - token_times[0]) / (r.output_len - 1))
        clock += t1 - t0
        i = j
    return summarize("peft_mixed", reqs, ttft, tpot, clock - reqs[0].arrival, time.process_time() - cpu0)


# --- roofline and decode ---------------------------------------------------------------------------------------------
def matmul_roofline(model: Any) -> dict[str, Any]:
    """fp32 GEMM rate at the model's own batch-32 decode shapes, and the decode tokens/s it bounds."""
    shapes = []
    for name, p in model.named_parameters():
        if p.dim() == 2 and "embed_tokens" not in name:
            shapes.append(tuple(p.shape))
    if model.config.tie_word_embeddings:
        shapes.append(tuple(model.model.embed_tokens.weight.shape))
    flops_per_token = 2 * sum(o * i for o, i in shapes)
    x = torch.randn(32, model.config.hidden_size)
    ws = [torch.randn(o, i) for o, i in {s for s in shapes}]
    best = math.inf
    for _ in range(5):
        t = time.perf_counter()
        for o, i in shapes:
            w = next(w for w in ws if w.shape == (o, i))
            xi = x if i == x.shape[1] else torch.randn(32, i)
            torch.nn.functional.linear(xi, w)
        best = min(best, time.perf_counter() - t)
    gflops = flops_per_token * 32 / best / 1e9
    return {
        "gflops": round(gflops, 1),
        "flops_per_token": flops_per_token,
        "roofline_tokens_per_s_b32": round(1e9 * gflops / flops_per_token, 1),
    }


def decode_rate(engine: Any, names: list[str], distinct: int, steps: int = 6) -> float:
    """Steady decode tokens/s at batch 32 (32 sequences of 64 cached tokens), `distinct` adapters in the batch."""
    from tally.engine.runner import StepItem

    store, cache = engine.store, engine.cache
    slots = []
    for n in names[:distinct]:
        w = store.host_weights(n)
        while w is None:
            time.sleep(0.005)
            w = store.host_weights(n)
        slots.append(store.acquire_slot(w))
    rows = [cache.allocate(-1 - i) for i in range(32)]
    for r in rows:
        cache.lengths[r] = 64
    items = [StepItem(r, [100], 64, slots[i % distinct] if distinct else 0) for i, r in enumerate(rows)]
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        engine.runner.forward(items, [])
        times.append(time.perf_counter() - t)
    for r in sorted(rows, reverse=True):
        cache.release(r)
    for s in slots:
        store.release_slot(s)
    return 32 / statistics.median(times)


# --- main ------------------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="reduced grid (a few minutes)")
    ap.add_argument("--adapters-dir", default="/tmp/tally-bench-adapters", help="where the generated adapters go")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads",
        default="auto",
        help="torch threads for every system; auto: 1 when other processes load the machine (2 OpenMP threads "
        "on 2 shared cores spin and run up to 20x slower), else all cores",
    )
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    threads = (1 if os.getloadavg()[0] > 1.0 else os.cpu_count() or 1) if args.threads == "auto" else int(args.threads)
    torch.set_num_threads(threads)

    from tally.config import get_settings
    from tally.engine import Engine, EngineConfig
    from tally.engine.adapters import Fingerprint, load_adapter
    from tally.engine.files import hash_adapter
    from tally.models import ModelError, load_model, load_tokenizer, resolve_model

    settings = get_settings()
    try:
        path = resolve_model(settings.models.default, settings.models.cache_dir)
    except ModelError as exc:
        print(json.dumps({"error": str(exc)}))
        sys.exit(2)
    quick = args.quick
    counts = [10, 100, 1000] if quick else [1, 10, 100, 1000]
    alphas = [1.0] if quick else [0.1, 1.0]
    n_req = 32 if quick else 48
    n_req_single = 6 if quick else 8  # PEFT one at a time: a subset of the same requests
    n_req_mixed = 24 if quick else 32  # PEFT static batches: a subset of the same requests
    rate = 8.0  # requests/s: above what 2 cores serve, so every system runs saturated
    prompt_range, output_range = (8, 64), (8, 64)  # S-LoRA draws both from one range (U[8, 512] on GPUs)
    peft_counts = [100] if quick else [10, 100, 1000]

    t_setup = time.perf_counter()
    base = load_model(path)
    tokenizer = load_tokenizer(path)
    base_rss = rss()
    paths = make_adapters(Path(args.adapters_dir), max(counts), base, args.seed)
    gen_s = time.perf_counter() - t_setup
    names = [f"ad{i:04d}" for i in range(len(paths))]
    cfg = EngineConfig(
        max_num_seqs=32,
        max_model_len=256,
        max_tokens_per_step=512,
        adapter_slots=32,
        max_adapters_per_step=32,
        max_rank=64,
        host_cache_bytes=1 << 30,
        device="cpu",
    )
    engine = Engine(copy.deepcopy(base), tokenizer, settings.models.default, cfg)
    engine_rss = rss()
    load_times: list[float] = []
    read = engine.store._read

    def timed_read(entry: Any) -> Any:
        t = time.perf_counter()
        try:
            return read(entry)
        finally:
            load_times.append(time.perf_counter() - t)

    engine.store._read = timed_read  # type: ignore[method-assign]
    t = time.perf_counter()
    for name, p in zip(names, paths, strict=True):
        engine.add_adapter(name, p, load_now=False)
    register_s = time.perf_counter() - t

    roof = matmul_roofline(base)
    results: dict[str, Any] = {
        "benchmark": "serving",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),
        },
        "setup": {
            "quick": quick,
            "peft_mixed_requests": n_req_mixed,
            "rank": RANK,
            "targets": PROJ,
            "requests": n_req,
            "peft_single_requests": n_req_single,
            "rate_per_s": rate,
            "prompt_len": prompt_range,
            "output_len": output_range,
            "engine": cfg.__dict__,
            "adapter_generation_s": round(gen_s, 1),
            "register_1000_s": round(register_s, 2),
        },
        "roofline": roof,
        "runs": [],
    }
    vocab = int(base.config.vocab_size)
    # (c) the engine serving the base model alone: the ceiling the adapters are compared with
    base_reqs = workload(n_req, 0, 1.0, rate, prompt_range, output_range, vocab, args.seed)
    run_engine(engine, base_reqs[:8], names, base_only=True)  # warm-up
    engine_base = run_engine(engine, base_reqs, names, base_only=True)
    results["runs"].append({"adapters": 0, "alpha": None, **engine_base})
    base_tps = engine_base["tokens_per_s"]
    print(f"# engine_base {engine_base['tokens_per_s']} tok/s", file=sys.stderr)

    workloads = {
        (n, a): workload(n_req, n, a, rate, prompt_range, output_range, vocab, args.seed + n)
        for n in counts
        for a in alphas
    }
    rows: dict[tuple[int, float], dict[str, Any]] = {}
    for (n, alpha), reqs in workloads.items():  # every engine run first: PEFT's memory must not blur the peaks
        paired = run_engine(engine, reqs, names[:n], base_only=True)  # same requests, base model: drift-paired
        results["runs"].append({"adapters": n, "alpha": alpha, **paired})
        before = len(load_times)
        res = run_engine(engine, reqs, names[:n])
        res["adapter_loads"] = len(load_times) - before
        res["vs_engine_base"] = round(res["tokens_per_s"] / paired["tokens_per_s"], 3)
        res["vs_engine_base_cpu"] = round(res["tokens_per_cpu_s"] / paired["tokens_per_cpu_s"], 3)
        res["distinct_adapters"] = len({r.adapter for r in reqs})
        res["peak_over_engine_base_mb"] = round((res["peak_rss_mb"] * 2**20 - engine_rss) / 2**20, 1)
        rows[(n, alpha)] = row = {"adapters": n, "alpha": alpha, **res}
        results["runs"].append(row)
        print(
            f"# engine n={n} alpha={alpha}: {res['tokens_per_s']} tok/s "
            f"({res['vs_engine_base']}x base, cpu {res['vs_engine_base_cpu']}x)",
            file=sys.stderr,
        )
    engine.stop()
    for (n, alpha), reqs in workloads.items():
        if n not in peft_counts or (quick and alpha != 1.0):
            continue
        row = rows[(n, alpha)]
        model, load_s = peft_model(base, paths, {r.adapter for r in reqs if r.adapter is not None})
        single = run_peft_single(model, reqs[:n_req_single])
        mixed = run_peft_mixed(model, reqs[:n_req_mixed])
        del model
        gc.collect()
        for other in (single, mixed):
            other["peft_adapter_load_s"] = round(load_s, 1)
            results["runs"].append({"adapters": n, "alpha": alpha, **other})
        row["speedup_vs_peft_single"] = round(row["tokens_per_s"] / single["tokens_per_s"], 2)
        row["speedup_vs_peft_mixed"] = round(row["tokens_per_s"] / mixed["tokens_per_s"], 2)
        row["speedup_vs_peft_single_cpu"] = round(row["tokens_per_cpu_s"] / single["tokens_per_cpu_s"], 2)
        row["speedup_vs_peft_mixed_cpu"] = round(row["tokens_per_cpu_s"] / mixed["tokens_per_cpu_s"], 2)
        print(f"#   single {single['tokens_per_s']} mixed {mixed['tokens_per_s']} tok/s", file=sys.stderr)
        print(
            f"# peft n={n} alpha={alpha}: single {single['tokens_per_s']}, mixed {mixed['tokens_per_s']} tok/s",
            file=sys.stderr,
        )

    # decode at batch 32 against the roofline, base-only and with 32 distinct adapters in the batch
    dec_engine = Engine(copy.deepcopy(base), tokenizer, "base", cfg)
    for name, p in zip(names[:32], paths[:32], strict=True):
        dec_engine.add_adapter(name, p)
    decode = {
        "base_tokens_per_s": round(decode_rate(dec_engine, names, 0), 1),
        "adapters32_tokens_per_s": round(decode_rate(dec_engine, names, 32), 1),
    }
    decode["base_vs_roofline"] = round(decode["base_tokens_per_s"] / roof["roofline_tokens_per_s_b32"], 3)
    decode["adapters32_vs_roofline"] = round(decode["adapters32_tokens_per_s"] / roof["roofline_tokens_per_s_b32"], 3)
    results["decode_b32"] = decode
    # cold adapter loads: disk -> host (read, validate, convert), id known from registration
    cold = []
    for p in paths[-40:]:
        known = (hash_adapter(p), Fingerprint.of(p))
        t = time.perf_counter()
        load_adapter("cold", p, dec_engine.spec, known=known)
        cold.append(time.perf_counter() - t)
    first_time = []
    for p in paths[-10:]:
        t = time.perf_counter()
        load_adapter("first", p, dec_engine.spec)  # includes hashing the weights
        first_time.append(time.perf_counter() - t)
    results["adapter_load_ms"] = {
        "cold_p50": round(statistics.median(cold) * 1000, 2),
        "cold_p99": round(sorted(cold)[int(0.99 * len(cold))] * 1000, 2),
        "with_hash_p50": round(statistics.median(first_time) * 1000, 2),
        "during_runs_p50": round(statistics.median(load_times) * 1000, 2) if load_times else None,
        "during_runs_count": len(load_times),
    }
    results["memory_mb"] = {
        "process_after_base_model": round(base_rss / 2**20, 1),
        "process_after_engine_built": round(engine_rss / 2**20, 1),
        "kv_cache": round(engine.cache.nbytes / 2**20, 1),
    }
    at = {r["adapters"]: r for r in results["runs"] if r["system"] == "engine" and r["alpha"] == 1.0}
    a100, a1000 = at.get(100, {}), at.get(1000, {})
    engine_1000 = [r for r in results["runs"] if r["system"] == "engine" and r["adapters"] == 1000]
    goals = {
        "x10_vs_peft_single_at_100": (a100.get("speedup_vs_peft_single") or 0) >= 10,
        "x3_vs_peft_mixed_at_100": (a100.get("speedup_vs_peft_mixed") or 0) >= 3,
        "0.9x_base_at_1000": all(r["vs_engine_base"] >= 0.9 for r in engine_1000),
        "decode_b32_60pct_roofline": decode["adapters32_vs_roofline"] >= 0.6,
        "cold_load_p50_10ms": results["adapter_load_ms"]["cold_p50"] <= 10,
        "peak_within_base_plus_1.5GB_at_1000": all(r["peak_over_engine_base_mb"] <= 1536 for r in engine_1000),
    }
    results["goals"] = goals
    results["load_average_at_end"] = os.getloadavg()
    print(json.dumps(results, indent=2, default=str))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    print(
        f"serving: base {base_tps} tok/s; 100 adapters {a100.get('tokens_per_s')} tok/s "
        f"({a100.get('speedup_vs_peft_single')}x peft_single, {a100.get('speedup_vs_peft_mixed')}x peft_mixed); "
        f"1000 adapters {a1000.get('tokens_per_s')} tok/s ({a1000.get('vs_engine_base')}x base); "
        f"decode b32 {decode['adapters32_tokens_per_s']} tok/s ({decode['adapters32_vs_roofline']} of roofline); "
        f"cold load p50 {results['adapter_load_ms']['cold_p50']} ms; goals met {sum(goals.values())}/{len(goals)}"
    )


if __name__ == "__main__":
    main()
