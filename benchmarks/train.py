"""Fine-tuning end to end on the real base model: teach facts it does not know, measure the gain on paraphrases.

A datanet of fictional people (birthplace and job, several phrasings each, plus a one-line bio) from three
contributors, snapshotted; a second datanet (use `eval` only) holds paraphrased questions that appear in no
training row. Trains a LoRA adapter through `tally.factory.service.train` (the CLI/API path), evaluates the base
model and the adapter on the paraphrases through `tally.factory.evaluation.evaluate`, and checks the
training-data index: for each paraphrased question, does the highest-scoring training row's contributor match
the contributor who taught that person? Prints one JSON document, then one summary line.

Speed, in the same run: Hugging Face `Trainer` + PEFT trains the same rows (tokenised the same way), model, LoRA
rank/alpha/dropout/targets, batch size, epochs, max length, learning rate and schedule, with the same torch thread
count, right before `tally train` (the service path, ledger and training-data index on, as a user gets it). Tokens
are counted the same way for both (non-padding input tokens of every step); tokens/s is over each one's wall time
from loading the model to a saved adapter (tally's also holds the index, the manifest and the ledger entry). Goals:
tally/HF tokens/s >= 1.0, the final index pass <= 10% of tally's wall time. `--repeats N` alternates the two
trainers N times on the same data (HF then tally, tally then HF, ...): a shared machine's speed drifts by 10%
between minutes, so each pair gives a ratio, and the report, the evaluation and the index check take the median
pair (the lower middle one of an even count). `--compare-precision` then runs the final pass over the median
pair's adapter again at fp32 and at bf16, alternating, and reports the fastest time of each and the smallest
cosine between a row's gradients (and hidden states) from the two.

    python benchmarks/train.py [--quick] [--people 20] [--epochs 5] [--batch-size 8] [--lr 2e-3] [--tracin]
                               [--threads N] [--skip-eval] [--skip-hf] [--model NAME] [--repeats 1]
                               [--index-precision auto|fp32|bf16] [--compare-precision]

`--quick`: 16 people (128 rows), 2 epochs, batch 16, rank 16, per-epoch capture on (the default a user gets).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from tally.config import Settings, load_settings
from tally.datanets import contribute, service, snapshots
from tally.factory import evaluation
from tally.factory import service as factory
from tally.factory.config import SourceCfg, parse_config
from tally.identity import Principal, create_account
from tally.ledger import Ledger, open_ledger
from tally.models import load_model, resolve_model
from tally.store import open_store

FIRST = "Ilsa Tomas Brina Oskar Mirel Dagny Fenna Corin Halvard Jessa Kaito Liora Maelis Nerys Orrin Pella".split()
LAST = "Varn Quell Drass Ombrey Talk Vesk Marrow Fenlo Gasht Ivren Kolby Ruske Stavin Thule Wennick Yarrow".split()
TOWNS = "Korvath Drennick Ulmsby Pellwater Ostrava Quillon Marsk Tevering Hollin Brask Zedmoor Caddis Elverum".split()
TOWNS += "Fornhollow Gristby Lantmere Orwick Saltreach Vintry Wexford Yelm Ashgrove Brackenhurst Dunmere".split()
JOBS = "glassblower cartographer beekeeper clockmaker lighthouse keeper falconer bookbinder cooper".split()
JOBS += "stonemason luthier tanner chandler".split()
TRAIN_BIRTH = ["Where was {n} born?", "What is the birthplace of {n}?", "In which town was {n} born?",
               "Which place is {n} originally from?"]  # fmt: skip
TRAIN_JOB = ["What does {n} do for a living?", "What is {n}'s job?", "What is the profession of {n}?"]
EVAL_BIRTH = ["Name the town where {n} was born.", "{n} was born in which town?"]
EVAL_JOB = ["What kind of work does {n} do?", "{n} works as what?"]


def make_people(n: int, seed: int = 0) -> list[tuple[str, str, str]]:
    rng = random.Random(seed)
    names = rng.sample([f"{f} {last}" for f in FIRST for last in LAST], n)
    return [(name, rng.choice(TOWNS), rng.choice(JOBS)) for name in names]


def train_rows(person: tuple[str, str, str]) -> list[dict[str, str]]:
    name, town, job = person
    rows = [{"instruction": q.format(n=name), "input": "", "output": town} for q in TRAIN_BIRTH]
    rows += [{"instruction": q.format(n=name), "input": "", "output": job} for q in TRAIN_JOB]
    bio = f"{name} was born in {town} and works as a {job}."
    return [*rows, {"instruction": f"Tell me about {name}.", "input": "", "output": bio}]


def eval_rows(person: tuple[str, str, str], k: int) -> list[dict[str, str]]:
    name, town, job = person
    return [
        {"instruction": EVAL_BIRTH[k % 2].format(n=name), "input": "", "output": town},
        {"instruction": EVAL_JOB[k % 2].format(n=name), "input": "", "output": job},
    ]


def jsonl(rows: list[dict[str, str]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def build_world(settings: Settings, ledger: Ledger, people: list[tuple[str, str, str]], contributors: int = 3) -> Any:
    """Accounts, a training datanet (rows split by person among contributors) and an eval-only datanet."""
    with ledger.store.transaction() as s:
        owner = Principal.of(create_account(s, ledger, "owner", ["owner", "contributor"])[0])
        dev = Principal.of(create_account(s, ledger, "dev", ["developer"])[0])
        givers = [Principal.of(create_account(s, ledger, f"c{i}", ["contributor"])[0]) for i in range(contributors)]
        limits = {"max_upload_bytes": 10**8, "max_rows_per_day": 10**6}
        service.create_datanet(s, ledger, owner, "people", kind="instruction", license="CC-BY-4.0",
                               uses=["train", "eval"], policy="open", **limits)  # fmt: skip
        service.create_datanet(s, ledger, owner, "people-paraphrases", kind="instruction", license="CC-BY-4.0",
                               uses=["eval"], policy="open", **limits)  # fmt: skip
    teacher = {}
    for i, giver in enumerate(givers):
        mine = people[i::contributors]
        teacher.update({p[0]: giver.address for p in mine})
        with ledger.store.transaction() as s:
            rows = jsonl([r for p in mine for r in train_rows(p)])
            contribute.contribute(s, ledger, giver, "people", rows, "facts.jsonl", settings=settings.datanets,
                                  chain_id=settings.chain_id)  # fmt: skip
    with ledger.store.transaction() as s:
        rows = jsonl([r for k, p in enumerate(people) for r in eval_rows(p, k)])
        contribute.contribute(s, ledger, owner, "people-paraphrases", rows, "eval.jsonl", settings=settings.datanets,
                              chain_id=settings.chain_id)  # fmt: skip
        snapshots.create_snapshot(s, ledger, owner, "people")
        snapshots.create_snapshot(s, ledger, owner, "people-paraphrases")
    return dev, teacher


def precision_check(
    out_dir: Path, cfg: Any, model_name: str, settings: Settings, store: Any, dev: Principal, rounds: int = 2
) -> dict[str, Any]:
    """The final pass over the trained adapter's own rows at fp32 and at bf16, alternating, in this process: the
    fastest time of each and how far apart the stored quantities are (each row's gradient and hidden state)."""
    from peft import PeftModel

    from tally.factory.data import load_examples
    from tally.factory.encode import encode, pad_id
    from tally.factory.index_build import final_gradients
    from tally.influence import Projector, load_index
    from tally.models import load_model, load_tokenizer, resolve_model

    model_dir = resolve_model(model_name, settings.models.cache_dir)
    tok = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(load_model(model_dir), str(out_dir), is_trainable=True)
    index = load_index(out_dir / "influence")
    projector = Projector.from_description(index.meta["projection"])
    with store.read() as s:
        data = load_examples(s, dev, [SourceCfg(datanet="people")])
    rows = {e["row_hash"] for e in index.examples}  # the training rows (eval rows held out are not in the index)
    items = [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in data.examples
             if e.row_hash in rows]  # fmt: skip
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for _ in range(rounds):
        for precision in ("fp32", "bf16"):
            t = time.monotonic()
            out[precision] = final_gradients(model, items, projector, 16, pad_id(tok), precision=precision)
            seconds[precision].append(time.monotonic() - t)
    cos = torch.nn.functional.cosine_similarity
    return {
        "rows": len(items), "fp32_seconds": round(min(seconds["fp32"]), 2),
        "bf16_seconds": round(min(seconds["bf16"]), 2),
        "bf16_speedup": round(min(seconds["fp32"]) / min(seconds["bf16"]), 3),
        "gradient_cosine_min": round(float(cos(out["fp32"][0], out["bf16"][0], dim=1).min()), 5),
        "hidden_cosine_min": round(float(cos(out["fp32"][1], out["bf16"][1], dim=1).min()), 6),
    }  # fmt: skip


def attribution_check(
    out_dir: Path, cfg: Any, model_name: str, settings: Settings, people: list, teacher: dict
) -> dict[str, Any]:
    """Right-contributor rate of the index on the paraphrased questions: final-only vs summed over epochs."""
    from peft import PeftModel

    from tally.factory.encode import encode, pad_id
    from tally.factory.index_build import final_gradients
    from tally.influence import Projector, load_index, scores
    from tally.models import load_model, load_tokenizer, resolve_model

    model_dir = resolve_model(model_name, settings.models.cache_dir)
    tok = load_tokenizer(model_dir)
    model = PeftModel.from_pretrained(load_model(model_dir), str(out_dir), is_trainable=True)
    index = load_index(out_dir / "influence")
    projector = Projector.for_model(model, cfg.influence.dims, cfg.influence.seed)
    questions = [(r, p[0]) for k, p in enumerate(people) for r in eval_rows(p, k)]
    items = [encode(tok, [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}],
                    256) for r, _ in questions]  # fmt: skip
    start = time.monotonic()
    q, _ = final_gradients(model, items, projector, 16, pad_id(tok))
    query_s = time.monotonic() - start
    contributors = [e["contributor"] for e in index.examples]
    result: dict[str, Any] = {"query_seconds_per_question": query_s / len(items)}
    variants = {"final": ["final"]}
    epochs = sorted(k for k in index.tensors if k.startswith("epoch_"))
    if epochs:  # TracIn-style: in-run gradients of each epoch, compared with the query at the final adapter
        variants |= {"epochs_sum": epochs, "epochs_and_final": [*epochs, "final"]}
    for label, ckpts in variants.items():
        s = scores(index, dict.fromkeys(ckpts, q), ckpts)
        top = s.argmax(dim=1).tolist()
        result[f"right_contributor_{label}"] = sum(
            contributors[t] == teacher[name] for t, (_, name) in zip(top, questions, strict=True)
        ) / len(questions)
    return result


def training_items(settings: Settings, ledger: Ledger, dev: Any, cfg: Any) -> tuple[list[Any], int]:
    """The training rows as tally's service path encodes them, in the index's order, and the pad id."""
    from tally.factory.data import load_examples, split
    from tally.factory.encode import encode, pad_id
    from tally.models import load_tokenizer

    with ledger.store.read() as s:
        data = load_examples(s, dev, cfg.data.datanets)
    rows, _ = split(data.examples, cfg.data.eval_fraction, cfg.train.seed)
    tok = load_tokenizer(resolve_model(cfg.model.name, settings.models.cache_dir))
    return [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in rows], pad_id(tok)


def hf_train(settings: Settings, ledger: Ledger, dev: Any, cfg: Any, out: Path) -> dict[str, Any]:
    """The same run with Hugging Face Trainer + PEFT: same rows and tokens, same hyperparameters."""
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    from tally.factory.encode import Encoded, collate

    start = time.monotonic()  # from the rows in the store, as tally's service path starts
    model_dir = resolve_model(cfg.model.name, settings.models.cache_dir)
    items, pad = training_items(settings, ledger, dev, cfg)
    dataset = [{"input_ids": it.input_ids, "labels": it.labels} for it in items]
    t, m = cfg.train, cfg.method
    warmup = int(t.epochs * math.ceil(len(items) / (t.batch_size * t.grad_accum)) * t.warmup_ratio)  # as tally's
    torch.manual_seed(t.seed)
    lora = LoraConfig(r=m.rank, lora_alpha=m.alpha, lora_dropout=m.dropout, target_modules=m.targets,
                      task_type="CAUSAL_LM")  # fmt: skip
    model = get_peft_model(load_model(model_dir), lora)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.grad_accum,
        num_train_epochs=t.epochs, learning_rate=t.lr, lr_scheduler_type=t.schedule, warmup_steps=warmup,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm or 0.0, optim="adamw_torch", seed=t.seed,
        save_strategy="no", logging_strategy="no", report_to="none", use_cpu=True, dataloader_num_workers=0,
        remove_unused_columns=False, disable_tqdm=True,
    )  # fmt: skip

    def collator(features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        return collate([Encoded(f["input_ids"], f["labels"]) for f in features], pad)

    with contextlib.redirect_stdout(io.StringIO()):  # Trainer prints its metrics; stdout is the JSON report's
        result = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator).train()
    model.save_pretrained(str(out / "adapter"))
    wall = time.monotonic() - start
    tokens = t.epochs * sum(len(it.input_ids) for it in items)  # every row once per epoch, padding excluded
    loop = float(result.metrics["train_runtime"])
    return {"rows": len(items), "tokens": tokens, "wall_seconds": round(wall, 1), "loop_seconds": round(loop, 1),
            "tokens_per_s": round(tokens / wall, 1), "loop_tokens_per_s": round(tokens / loop, 1),
            "train_loss": result.metrics.get("train_loss")}  # fmt: skip


def speed(hf: dict[str, Any] | None, manifest: dict[str, Any], wall: float) -> dict[str, Any]:
    """tally's side of the speed table, and the ratios against HF from the same run."""
    tokens, loop = manifest["metrics"]["tokens"], manifest["metrics"]["train_seconds"]
    index_s = (manifest.get("influence") or {}).get("final_pass_seconds", 0.0)
    tally = {"tokens": tokens, "wall_seconds": round(wall, 1), "loop_seconds": round(loop, 1),
             "tokens_per_s": round(tokens / wall, 1), "loop_tokens_per_s": round(tokens / loop, 1),
             "index_pass_seconds": round(index_s, 2), "index_pass_share": round(index_s / wall, 4)}  # fmt: skip
    out: dict[str, Any] = {"tally": tally, "hf": hf, "goals": {"tally_over_hf": 1.0, "index_pass_share": 0.10}}
    if hf:
        out["same_tokens"] = hf["tokens"] == tokens
        out["tally_over_hf"] = round(tally["tokens_per_s"] / hf["tokens_per_s"], 3)
        out["tally_over_hf_loop"] = round(tally["loop_tokens_per_s"] / hf["loop_tokens_per_s"], 3)
    return out


def median_index(runs: list[dict[str, Any]]) -> int:
    """The repeat whose end-to-end ratio against HF (without HF: whose tokens/s) is the median; of an even count,
    the lower of the middle two."""
    key = (lambda i: runs[i]["tally_over_hf"]) if runs[0].get("hf") else (lambda i: runs[i]["tally"]["tokens_per_s"])
    ordered = sorted(range(len(runs)), key=key)
    return ordered[(len(ordered) - 1) // 2]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 people (128 rows), 2 epochs, batch 16, rank 16")
    ap.add_argument("--people", type=int, help="made-up people, 8 training rows each (default 20; --quick: 16)")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    ap.add_argument("--tracin", action="store_true", help="also capture per-example gradients in every epoch")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads, both trainers")
    ap.add_argument("--skip-eval", action="store_true", help="skip the exact-match evaluation (generation)")
    ap.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face Trainer column")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument(
        "--compare-precision", action="store_true",
        help="also time the final pass over the trained adapter at fp32 and at bf16 in this process",
    )  # fmt: skip
    ap.add_argument("--repeats", type=int, default=1, help="alternate HF and tally this many times (median ratio)")
    ap.add_argument(
        "--index-precision", choices=("auto", "fp32", "bf16"), default="auto",
        help="influence.precision of the final index pass (auto: bf16 where the CPU has native bf16)",
    )  # fmt: skip
    ap.add_argument("--keep", type=Path, help="keep the data directory here instead of a temporary one")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.quick:
        args.people, args.epochs, args.batch_size, args.rank, args.tracin = args.people or 16, 2, 16, 16, True
    args.people = args.people or 20
    torch.set_num_threads(max(1, args.threads))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        settings = load_settings(data_dir=root / "data")
        store = open_store(settings)
        ledger = open_ledger(settings, store)
        people = make_people(args.people)
        dev, teacher = build_world(settings, ledger, people)
        cfg = parse_config({
            "model": {"name": args.model},
            "method": {"rank": args.rank, "alpha": 2 * args.rank, "dropout": 0.05},
            "data": {"datanets": [{"datanet": "people"}], "max_length": 128},
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "seed": 0,
                      "schedule": args.schedule},
            "influence": {"per_epoch": args.tracin, "precision": args.index_precision},
            "output": {"name": "people-facts", "dir": str(root / "adapter")},
        })  # fmt: skip
        load_model(resolve_model(args.model, settings.models.cache_dir))  # warm the file cache for both runs
        pairs = []
        for i in range(args.repeats):
            if i:  # each repeat writes an adapter of its own
                cfg = cfg.model_copy(update={"output": cfg.output.model_copy(
                    update={"name": f"people-facts-{i}", "dir": root / f"adapter-{i}"})})  # fmt: skip
            # the order alternates (HF first, then tally first), so a drift over the run favours neither trainer
            hf = None if args.skip_hf or i % 2 else hf_train(settings, ledger, dev, cfg, root / f"hf-{i}")
            t0 = time.monotonic()
            trained = factory.train(settings, ledger, dev, cfg)
            seconds = time.monotonic() - t0
            if not args.skip_hf and i % 2:
                hf = hf_train(settings, ledger, dev, cfg, root / f"hf-{i}")
            pairs.append((hf, trained, seconds))
        runs = []
        for hf, run, seconds in pairs:
            assert run.manifest is not None  # trained to the end
            runs.append(speed(hf, run.manifest.model_dump(mode="json"), seconds))
            index_meta = json.loads((run.out_dir / "influence" / "index.json").read_text())
            runs[-1]["tally"]["index_pass_precision"] = index_meta["cost"]["final_pass_precision"]
        middle = median_index(runs)
        fast, trained = runs[middle], pairs[middle][1]  # the median pair's adapter is evaluated and checked
        t1 = time.monotonic()
        results = [] if args.skip_eval else evaluation.evaluate(
            settings, ledger, dev, [SourceCfg(datanet="people-paraphrases")], base_model=args.model,
            adapters=[str(trained.out_dir)],
        )  # fmt: skip
        eval_s = time.monotonic() - t1
        attribution = attribution_check(trained.out_dir, cfg, args.model, settings, people, teacher)
        precision = (
            precision_check(trained.out_dir, cfg, args.model, settings, store, dev) if args.compare_precision else None
        )
        base, tuned = (results[0].metrics, results[1].metrics) if results else ({}, {})
        manifest = trained.manifest.model_dump(mode="json") if trained.manifest else {}
        report = {
            "benchmark": "factory.train", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "platform": platform.platform(), "load_before": load_before, "load_after": os.getloadavg()},
            "model": args.model, "people": args.people, "train_rows": manifest["data"]["train_rows"],
            "eval_questions": results[0].examples if results else 0, "config": cfg.model_dump(mode="json")["train"],
            "speed": fast, "repeats": runs if len(runs) > 1 else [],
            "train_seconds_total": fast["tally"]["wall_seconds"], "metrics_train": manifest["metrics"],
            "influence": manifest["influence"], "eval_seconds": round(eval_s, 1),
            "base": base, "adapter": tuned, "samples": results[1].samples[:6] if results else [],
            "attribution": attribution, "index_pass_precisions": precision,
        }  # fmt: skip
        print(json.dumps(report, indent=1))
        t, h = fast["tally"], fast["hf"]
        ratios = ", ".join(f"{r['tally_over_hf']:.2f}" for r in runs if r.get("hf"))
        median = "median" if len(runs) % 2 else "lower median"
        compared = (
            f"; the pass again at fp32 {precision['fp32_seconds']:.1f} s, bf16 {precision['bf16_seconds']:.1f} s "
            f"({precision['bf16_speedup']:.2f}x), row gradients at cosine >= {precision['gradient_cosine_min']:.4f}"
            if precision
            else ""
        )
        pairs_note = f"; {median} of {len(runs)} alternating pairs: {ratios}" if len(runs) > 1 else ""
        vs_hf = (
            f"HF Trainer+PEFT {h['tokens_per_s']:.1f} tokens/s ({h['wall_seconds']:.0f} s), tally/HF "
            f"{fast['tally_over_hf']:.2f} (goal >= 1.0{pairs_note}); "
            if h
            else ""
        )
        quality = (
            f"exact match on {results[0].examples} paraphrases {base['exact_match']:.2f} (base) -> "
            f"{tuned['exact_match']:.2f} (adapter); "
            if results
            else ""
        )
        print(
            f"factory.train ({report['train_rows']} rows, {args.epochs} epochs, batch {args.batch_size}, "
            f"r{args.rank}, {torch.get_num_threads()} threads): tally {t['tokens_per_s']:.1f} tokens/s "
            f"({t['wall_seconds']:.0f} s); {vs_hf}index pass ({t['index_pass_precision']}) "
            f"{t['index_pass_seconds']:.1f} s = "
            f"{100 * t['index_pass_share']:.1f}% of tally's wall time (goal <= 10%); {quality}index picks the right "
            f"contributor {attribution['right_contributor_final']:.2f} of the time (final checkpoint){compared}"
        )
        store.dispose()


if __name__ == "__main__":
    main()
