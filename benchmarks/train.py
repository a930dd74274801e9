"""Fine-tuning end to end on the real base model: teach facts it does not know, measure the gain on paraphrases.

A datanet of fictional people (birthplace and job, several phrasings each, plus a one-line bio) from three
contributors, snapshotted; a second datanet (use `eval` only) holds paraphrased questions that appear in no
training row. Trains a LoRA adapter through `tally.factory.service.train` (the CLI/API path), evaluates the base
model and the adapter on the paraphrases through `tally.factory.evaluation.evaluate`, and checks the
training-data index: for each paraphrased question, does the highest-scoring training row's contributor match
the contributor who taught that person? Prints one JSON document, then one summary line.

    python benchmarks/train.py [--people 20] [--epochs 5] [--batch-size 8] [--lr 2e-3] [--tracin] [--model NAME]
"""

from __future__ import annotations

import argparse
import json
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


def attribution_check(out_dir: Path, cfg: Any, model_name: str, settings: Settings, people: list, teacher: dict):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--people", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    ap.add_argument("--tracin", action="store_true", help="also capture per-example gradients in every epoch")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--keep", type=Path, help="keep the data directory here instead of a temporary one")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
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
            "influence": {"per_epoch": args.tracin},
            "output": {"name": "people-facts", "dir": str(root / "adapter")},
        })  # fmt: skip
        t0 = time.monotonic()
        trained = factory.train(settings, ledger, dev, cfg)
        train_s = time.monotonic() - t0
        t1 = time.monotonic()
        results = evaluation.evaluate(settings, ledger, dev, [SourceCfg(datanet="people-paraphrases")],
                                      base_model=args.model, adapters=[str(trained.out_dir)])  # fmt: skip
        eval_s = time.monotonic() - t1
        attribution = attribution_check(trained.out_dir, cfg, args.model, settings, people, teacher)
        base, tuned = results[0].metrics, results[1].metrics
        assert trained.manifest is not None  # trained to the end
        manifest = trained.manifest.model_dump(mode="json")
        report = {
            "benchmark": "factory.train", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
            "model": args.model, "people": args.people, "train_rows": manifest["data"]["train_rows"],
            "eval_questions": results[0].examples, "config": cfg.model_dump(mode="json")["train"],
            "train_seconds_total": round(train_s, 1), "metrics_train": manifest["metrics"],
            "influence": manifest["influence"], "eval_seconds": round(eval_s, 1),
            "base": base, "adapter": tuned, "samples": results[1].samples[:6], "attribution": attribution,
        }  # fmt: skip
        print(json.dumps(report, indent=1))
        print(
            f"factory.train: exact match on {results[0].examples} paraphrased questions {base['exact_match']:.2f} "
            f"(base) -> {tuned['exact_match']:.2f} (adapter, {args.epochs} epochs, {report['train_rows']} rows, "
            f"{train_s:.0f} s incl. index {manifest['influence'].get('final_pass_seconds', 0):.0f} s); "
            f"token F1 {base['token_f1']:.2f} -> {tuned['token_f1']:.2f}; index picks the right contributor "
            f"{attribution['right_contributor_final']:.2f} of the time (final-adapter gradients)"
        )
        store.dispose()


if __name__ == "__main__":
    main()
