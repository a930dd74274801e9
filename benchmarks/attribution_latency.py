"""Attribution cost on the real base model: what `fast` and `full` add to a 64-token answer, and index scoring.

Measured in one run, on one machine state:
  generate      the engine answering with a rank-16 adapter (all seven projections), exactly 64 new tokens
  fast / full   attributing that answer (spans over an empty span index, representation, gradient cosine; full
                adds DataInf) against an index of 10k rows, median of repeats, once the adapter's null is
                calibrated (its first `null_probes` answers also run the random twin: timed separately)
  backward      one forward + backward of the answer's loss through the adapter (the query's unit of work)
  scoring       the index scorers alone against 10k and 100k rows (4096 projected dims, 3 epoch checkpoints +
                the final pass, 576-dim representation)
The adapter is randomly initialised and the index rows are random vectors of the right shapes: cost does not
depend on what the numbers are. Goals: fast <= 20% of the answer's latency; full <= one backward + 50 ms at 10k
rows; scoring 100k rows <= 50 ms. Prints one JSON document and a one-line summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--big-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tally-attr-latency-"))
    os.environ["TALLY_DATA_DIR"] = str(tmp / "data")
    from tally.attribution.service import Answer, Attributor
    from tally.config import load_settings
    from tally.engine import Engine, EngineConfig, SamplingParams
    from tally.engine.files import hash_adapter
    from tally.influence import IndexScorer, load_index
    from tally.models import load_model, load_tokenizer, resolve_model
    from tally.store import open_store

    settings = load_settings()
    store = open_store(settings)
    model_dir = resolve_model(args.model, settings.models.cache_dir)
    print("building the adapter and a 10k-row index ...", file=sys.stderr)
    adapter = make_adapter(model_dir, tmp / "adapter", args.rows)
    tok = load_tokenizer(model_dir)
    engine = Engine(load_model(model_dir), tok, args.model, EngineConfig(device="cpu")).start()
    engine.add_adapter("bench", adapter)
    prompt = engine.encode_chat([{"role": "user", "content": "Describe the town of Korvath and its glassblowers."}])
    params = SamplingParams(max_tokens=64, temperature=0, ignore_eos=True)
    engine.generate(prompt, params, "bench")  # warm-up: loads the adapter into a slot
    print("timing generation ...", file=sys.stderr)
    answer_ids: list[int] = []

    def generate() -> None:
        answer_ids[:] = engine.generate(prompt, params, "bench").token_ids

    generate_ms = _median_ms(generate, args.repeats)
    engine.stop()
    attributor = Attributor(settings, store, model_dir, args.model)
    digest = hash_adapter(adapter)
    counter = iter(range(10**6))

    def attribute(mode: str) -> None:
        answer = Answer(f"bench-{next(counter)}", "bench", prompt, answer_ids, adapter, digest)
        attributor.attribute(answer, mode)  # type: ignore[arg-type]

    attribute("full")  # warm-up: loads the attribution model, the adapter, the index and DataInf's matrices
    print("timing attribution while the null is calibrated ...", file=sys.stderr)
    calibrating_ms = _median_ms(lambda: attribute("fast"), settings.attribution.null_probes - 1)
    print("timing attribution ...", file=sys.stderr)
    fast_ms = _median_ms(lambda: attribute("fast"), args.repeats)
    full_ms = _median_ms(lambda: attribute("full"), args.repeats)
    projection = json.loads((adapter / "influence" / "index.json").read_text())["projection"]
    backward_ms = _median_ms(
        lambda: attributor.query_model.signals(digest, adapter, projection, prompt, answer_ids), args.repeats
    )
    scoring: dict[str, Any] = {}
    for rows in (args.rows, args.big_rows):
        print(f"timing scoring against {rows} rows ...", file=sys.stderr)
        write_index(tmp / f"idx-{rows}", projection, rows, 576)
        scoring[str(rows)] = time_scorer(IndexScorer(load_index(tmp / f"idx-{rows}" / "influence")), args.repeats)
    result = {
        "benchmark": "attribution_latency",
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, torch {torch.__version__}",
        "model": args.model, "answer_tokens": len(answer_ids), "prompt_tokens": len(prompt), "index_rows": args.rows,
        "generate_ms": generate_ms, "fast_ms": fast_ms, "full_ms": full_ms, "backward_ms": backward_ms,
        "fast_while_calibrating_null_ms": calibrating_ms, "null_probes": settings.attribution.null_probes,
        "fast_over_generate": round(fast_ms / generate_ms, 3),
        "full_minus_backward_ms": round(full_ms - backward_ms, 2),
        "scoring": scoring,
        "goals": {
            "fast_le_20pct": fast_ms / generate_ms <= 0.2,
            "full_le_backward_plus_50ms": full_ms <= backward_ms + 50,
            "scoring_100k_le_50ms": scoring[str(args.big_rows)]["fast_ms"] <= 50,
        },
    }  # fmt: skip
    print(json.dumps(result, indent=1))
    print(
        f"attribution_latency: 64-token answer {generate_ms:.0f} ms; fast +{fast_ms:.0f} ms "
        f"({fast_ms / generate_ms:.0%}); full {full_ms:.0f} ms vs one backward {backward_ms:.0f} ms; "
        f"scoring {args.big_rows // 1000}k rows {scoring[str(args.big_rows)]['fast_ms']:.0f} ms (fast), "
        f"{scoring[str(args.big_rows)]['datainf_ms']:.0f} ms (DataInf)"
    )


if __name__ == "__main__":
    main()
