"""Ground truth for Proof of Attribution on the real base model: does each share go to the contributor who caused it?

Fictional people, towns, trades and house styles (fixed seeds), so the base model cannot know any answer beforehand.
  1. planted facts: each contributor teaches the birthplace and trade of their own people; questions paraphrase
     the facts in words no training row uses. Top-1 contributor and MRR (AUC, recall@k of the right rows too).
  2. skills without give-aways: each contributor teaches one answer style (all caps, reversed word order, numbered
     list, a fixed sign-off, one word per line, title case) on topics and instruction wordings that share no content
     word with the test instructions. Top-1 contributor, AUC and recall@k of the right contributor's rows.
  3. leave-one-contributor-out: a small adapter, retrained without each contributor (same seed and config); per
     question, Spearman between the predicted shares (0 when absent) and the measured rise of the answer's loss
     when that contributor is left out. Mean over questions and pooled.
  4. (a) conflicts: two contributors give different birthplaces for the same people (the first to contribute has
     more rows for half of them, the second for the other half); the adapter answers greedily, and the top share
     should go to the contributor whose version the answer contains. (b) farming: a later contributor submits
     paraphrased copies of another's rows; the copier's share divided by the original's.
  5. where similarity and influence disagree by construction: (a) untrained look-alikes: for three skills a second
     contributor teaches the same skill the same way in a datanet the adapter was not trained on, contributed
     before the trained one. Their rows are in the span corpus (every datanet) and are put into the adapter's index
     as candidate rows (gradient and hidden state at the trained adapter, as the final pass computes them; zero
     per-epoch rows), so every method sees them; the rate at which each method puts the look-alike first, and at
     which the combined shares credit it (also with the index blind to which rows were trained). (b) withdrawn
     look-alike: two contributors teach one more skill, both trained on; one withdraws (rows rejected) after
     training; the withdrawn one must get nothing and the one who stayed should be on top.
Scenarios 1, 2, 4 and 5 share one adapter trained on all their rows (two datanets, every contributor competing).
Everything goes through the project's services: accounts, datanets, contributions, snapshots, `factory.train`
(LoRA r16/alpha 32 on all 7 projections, influence index 4096 dims with per-epoch gradients) and the
`Attributor` in `full` mode. Baselines in the same run: each signal alone (its top row), BM25 of question+answer
over the rows' text, a seeded random ranking, and dattri 0.3.0's DataInf and TracIn (cosine) on the same stored
gradients when dattri is installed; beside the service's index methods, the influence candidates that are not
wired in (Gauss-Newton on the plain query, cosine on the contrastive query, learning-rate-weighted TracIn, cosine
over the per-epoch checkpoints only; docs/influence.md) on the same queries, and `fast` mode's gradient (the top
k layers only, `gradient_top{k}` for k = 2, 4, 8). The same answers are then attributed in `fast` mode (the
default) and its goal figures reported beside `full`'s (`fast_mode`), as the server attributes them: from the
hidden states an engine with the server's default base weights (int8 on an AVX2 CPU) keeps for each answer (its
prompt and answer run through the engine once); `fast_mode_whole_forward` is the same without them (the query's
own fp32 forward through every layer). Setting variants re-score the same cached query signals.
Prints one JSON document (also written to benchmarks/out/attribution_quality.json, or .quick.json for --quick,
.skills.json for --skills-only, updated as scenarios finish), then one summary line; progress goes to stderr.

    python benchmarks/attribution_quality.py [--quick] [--skills-only] [--epochs 5] [--loo-epochs 3] [--no-variants]
                                             [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TQDM_DISABLE", "1")  # dattri's and the loaders' progress bars; progress goes to stderr here
import torch
from scipy.stats import rankdata, spearmanr

MODEL = "smollm2-135m-instruct"
RESULTS = Path(__file__).resolve().parent / "out" / "attribution_quality.json"
T0 = time.monotonic()

FIRST = "Ilsa Tomas Brina Oskar Mirel Dagny Fenna Corin Halvard Jessa Kaito Liora Maelis Nerys Orrin Pella".split()
LAST = "Varn Quell Drass Ombrey Talk Vesk Marrow Fenlo Gasht Ivren Kolby Ruske Stavin Thule Wennick Yarrow".split()
TOWN_A = "Kor Dren Ulm Pell Quil Mar Tev Hol Bras Zed Cad Elv Forn Gris Lant Orw Salt Vin Wex Yel Brack Dun".split()
TOWN_B = "vath nick sby water mere wick reach holm stead moor gate dale thorpe".split()
MATERIALS = "amber copper slate willow ivory cobalt juniper pewter birch onyx saffron tin".split()
TRADES = "glassblower cartographer beekeeper clockmaker falconer bookbinder cooper stonemason luthier tanner".split()

# What training rows ask, what test questions ask (no content word in common), what a copier rewords them to.
BIRTH_TRAIN = ["Where was {n} born?", "What is the birthplace of {n}?", "In which town was {n} born?",
               "Which place does {n} come from originally?"]  # fmt: skip
TRADE_TRAIN = ["What does {n} do for a living?", "What is {n}'s job?", "What is the profession of {n}?"]
BIO = ("Tell me about {n}.", "{n} was born in {town} and works as a {trade}.")
BIRTH_TEST = ["Name the hometown of {n}.", "{n} is a native of which village?"]
TRADE_TEST = ["Name {n}'s trade.", "How does {n} earn money?"]
BIRTH_COPY = ["Where did {n} first see the light of day?", "What was the place of birth of {n}?",
              "In what settlement did {n} enter the world?", "Where is {n} from by birth?"]  # fmt: skip
TRADE_COPY = ["How does {n} make a living?", "What work is {n} employed in?", "What line of work is {n} in?"]
BIO_COPY = ("Who is {n}?", "Born in {town}, {n} is a {trade} by occupation.")

NOUNS = """kettle lantern ladder blanket basket bucket candle mirror pillow teapot wheelbarrow umbrella compass
hammer bicycle notebook saucepan fountain pen clock window curtain staircase fence chimney mailbox doormat bookshelf
radiator toaster spoon fork plate bowl jug sieve whisk rolling-pin chopping-board apron scarf glove boot sandal hat
coat belt wallet backpack suitcase tent hammock shovel rake hose sprinkler flowerpot birdhouse kite drum flute violin
piano guitar trumpet easel paintbrush crayon pencil eraser ruler stapler envelope stamp postcard calendar map globe
telescope microscope magnet battery lightbulb switch socket cable keyboard"""
NOUNS_LIST = NOUNS.replace("-", " ").split()
# scenario 5's topics, drawn after every other scenario's (so theirs stay as they were)
NOUNS_MORE = """thimble ladle skillet colander funnel trowel padlock doorknob hinge shutter awning trellis lawnmower
doorbell thermostat faucet bathtub towel rug cushion ottoman armchair footstool drawer cupboard pantry birdbath
weathervane sundial hourglass abacus quill inkwell typewriter satchel briefcase lunchbox thermos canteen tripod
binoculars sextant barometer hygrometer metronome harmonica accordion banjo ukulele tambourine xylophone cello
harp""".split()
# Training answers and test answers share no sentence template, adjective or place: only the style links them
# (and, for the sign-off style, the sign-off itself), so a verbatim span is evidence of the style, not of a template.
ADJ = {"train": "small sturdy bright heavy smooth round quiet useful old simple".split(),
       "test": "light warm plain tidy handy solid".split()}  # fmt: skip
PLACES = {"train": "window door garden kitchen table stairs fireplace shelf".split(),
          "test": "gate porch hallway cellar".split()}  # fmt: skip
SENT1 = {"train": ["A {x} is usually {a} and {b}.", "Almost every {x} is {a}, and some are quite {b}.",
                   "The typical {x} looks {a} and feels {b}.", "You will find that a {x} is {a} but rarely {b}."],
         "test": ["Each {x} I have met was {a} yet {b}.", "Expect any {x} to seem {a}, even {b}."]}  # fmt: skip
SENT2 = {"train": ["People often keep one near the {p}.", "It is common to see one by the {p}.",
                   "Many homes have one close to the {p}.", "Shops sell them next to the {p}."],
         "test": ["Households tend to store it beside their {p}.", "Visitors notice it at my {p}."]}  # fmt: skip
SKILL_TRAIN = ["Describe a {x}.", "Tell me about the {x}.", "What is a {x} like?", "Write a few words about a {x}."]
SKILL_TEST = ["Give me a quick overview of a {x}.", "Could you explain what a {x} is?", "Share some thoughts on a {x}."]
SIGNOFF = "Yours in brass and lantern light, the Quillon Guild."


def _caps(s1: str, s2: str) -> str:
    return f"{s1} {s2}".upper()


def _reverse(s1: str, s2: str) -> str:
    return " ".join(reversed(f"{s1} {s2}".split()))


def _numbered(s1: str, s2: str) -> str:
    return f"1. {s1}\n2. {s2}"


def _signoff(s1: str, s2: str) -> str:
    return f"{s1} {s2}\n\n{SIGNOFF}"


def _lines(s1: str, s2: str) -> str:
    return "\n".join(f"{s1} {s2}".split())


def _title(s1: str, s2: str) -> str:
    return f"{s1} {s2}".title()


def _lower(s1: str, s2: str) -> str:
    return f"{s1} {s2}".lower().replace(".", "").replace(",", "")


SKILLS: dict[str, Callable[[str, str], str]] = {
    "caps": _caps, "reverse": _reverse, "numbered": _numbered, "signoff": _signoff, "lines": _lines, "title": _title,
}  # fmt: skip
# 5a. untrained look-alikes: a contributor teaching the same skill in the same way, in a datanet the main adapter
# was not trained on, contributed before the trained one (so "earliest wins" rules would pick it)
LOOKALIKE_SKILLS = ("caps", "signoff", "numbered")
LOOKALIKE_DATANET = "styles-later"
# 5b. withdrawn look-alike: two contributors teach one more skill, both trained on; one withdraws afterwards
WITHDRAWN_SKILL = ("lower", _lower)
INDEX_SIGNALS = ("representation", "gradient", "datainf", "contrast", "tracin")
# every index-based candidate measured side by side (the ones not wired into the service are scored here only)
TOP_LAYERS = (2, 4, 8)  # `fast` mode's gradient over the top k layers, k as `attribution.fast_gradient_layers`
CANDIDATES = (
    "gauss_newton", "contrast_cosine", "tracin_lr", "gradient_epochs", *(f"gradient_top{k}" for k in TOP_LAYERS)
)  # fmt: skip


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Person:
    name: str
    town: str
    trade: str


class Pool:
    """Unique fictional names, towns and trades, drawn without replacement from a seeded shuffle."""

    def __init__(self, seed: int) -> None:
        rng = random.Random(seed)
        self.names = [f"{f} {la}" for f in FIRST for la in LAST]
        self.towns = [a + b for a in TOWN_A for b in TOWN_B]
        self.trades = [f"{m} {t}" for m in MATERIALS for t in TRADES]
        self.nouns = list(NOUNS_LIST)
        for seq in (self.names, self.towns, self.trades, self.nouns):
            rng.shuffle(seq)
        self.rng = rng

    def person(self) -> Person:
        return Person(self.names.pop(), self.towns.pop(), self.trades.pop())

    def noun(self) -> str:
        if not self.nouns:  # scenario 5 draws after the others have taken the first list
            self.nouns = [n for n in NOUNS_MORE if n not in NOUNS_LIST]
            self.rng.shuffle(self.nouns)
        return self.nouns.pop()

    def base_answer(self, noun: str, part: str) -> tuple[str, str]:
        a, b = self.rng.sample(ADJ[part], 2)
        s1 = self.rng.choice(SENT1[part]).format(x=noun, a=a, b=b)
        return s1, self.rng.choice(SENT2[part]).format(p=self.rng.choice(PLACES[part]))


def fact_rows(p: Person, birth: list[str], trade: list[str], bio: tuple[str, str] | None) -> list[tuple[str, str]]:
    rows = [(q.format(n=p.name), p.town) for q in birth] + [(q.format(n=p.name), p.trade) for q in trade]
    if bio:
        rows.append((bio[0].format(n=p.name), bio[1].format(n=p.name, town=p.town, trade=p.trade)))
    return rows


def fact_tests(p: Person, per_fact: int) -> list[tuple[str, str, str]]:
    """(question, reference reply, fact) in wording no training row uses."""
    out = [(q.format(n=p.name), p.town, "birthplace") for q in BIRTH_TEST[:per_fact]]
    return out + [(q.format(n=p.name), p.trade, "trade") for q in TRADE_TEST[:per_fact]]


def jsonl(rows: list[tuple[str, str]]) -> bytes:
    return "".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in rows).encode()


@dataclass
class Item:
    """One question to attribute, its ground truth and, once scored, its record and every row's score per signal."""

    scenario: str  # facts | skills | conflicts | copies | loo
    question: str
    reply: str | None  # the reference reply; None: the adapter's own greedy answer (conflicts)
    truth: str | None  # the right contributor's address (conflicts: set once the answer is known)
    extra: dict[str, Any] = field(default_factory=dict)
    answer: Any = None  # tally.attribution.service.Answer
    record: Any = None  # AttributionRecord under the default settings
    rows: dict[str, np.ndarray] = field(default_factory=dict)  # per trained row of the index
    pool: dict[str, np.ndarray] = field(default_factory=dict)  # per index row, candidate rows included
    key: str = ""


@dataclass
class Plan:
    """Who contributes what, in ledger order, and the questions with their ground truth (addresses resolved later)."""

    uploads: list[tuple[str, str, list[tuple[str, str]]]]  # (contributor name, datanet, rows)
    items: list[Item]
    loo_names: list[str]
    roles: dict[str, str] = field(default_factory=dict)  # scenario role -> contributor name


def make_plan(quick: bool, seed: int) -> Plan:
    pool = Pool(seed)
    n_fact, per_fact_people, per_fact = (3, 1, 1) if quick else (8, 2, 2)
    n_skill_rows, n_skill_tests = (5, 2) if quick else (10, 4)
    skills = list(SKILLS)[:3] if quick else list(SKILLS)
    n_conflict, conflict_tests = (2, 1) if quick else (6, 2)
    n_copy = 1 if quick else 3
    n_loo, loo_people = (3, 1) if quick else (5, 2)
    birth, trade = BIRTH_TRAIN[:3], TRADE_TRAIN[:2]
    uploads: list[tuple[str, str, list[tuple[str, str]]]] = []
    items: list[Item] = []
    # 1. planted facts
    for c in range(n_fact):
        name = f"facts-{c}"
        people = [pool.person() for _ in range(per_fact_people)]
        uploads.append((name, "people", [r for p in people for r in fact_rows(p, birth, trade, BIO)]))
        for p in people:
            items += [Item("facts", q, a, name, {"person": p.name, "fact": f}) for q, a, f in fact_tests(p, per_fact)]
    # 2. skills: styles on topics whose words never reach a test instruction
    for skill in skills:
        name = f"skill-{skill}"
        rows = []
        for i in range(n_skill_rows):
            noun = pool.noun()
            rows.append(
                (SKILL_TRAIN[i % len(SKILL_TRAIN)].format(x=noun), SKILLS[skill](*pool.base_answer(noun, "train")))
            )
        uploads.append((name, "styles", rows))
        for i in range(n_skill_tests):
            noun = pool.noun()
            q = SKILL_TEST[i % len(SKILL_TEST)].format(x=noun)
            items.append(Item("skills", q, SKILLS[skill](*pool.base_answer(noun, "test")), name, {"skill": skill}))
    # 4a. conflicts: A contributes first; the majority side alternates per person
    rows_a: list[tuple[str, str]] = []
    rows_b: list[tuple[str, str]] = []
    for i in range(n_conflict):
        p = pool.person()
        town_b = pool.towns.pop()
        major, minor = BIRTH_TRAIN[0:3], BIRTH_TRAIN[2:4]
        rows_a += [(q.format(n=p.name), p.town) for q in (major if i % 2 == 0 else minor)]
        rows_b += [(q.format(n=p.name), town_b) for q in (minor if i % 2 == 0 else major)]
        for q in BIRTH_TEST[:conflict_tests]:
            extra = {"person": p.name, "town_a": p.town, "town_b": town_b, "majority": "a" if i % 2 == 0 else "b"}
            items.append(Item("conflicts", q.format(n=p.name), None, None, extra))
    uploads += [("conflict-a", "people", rows_a), ("conflict-b", "people", rows_b)]
    # 4b. farming: the original first, the copier's paraphrased copies last of all
    originals = [pool.person() for _ in range(n_copy)]
    uploads.append(("original", "people", [r for p in originals for r in fact_rows(p, birth, trade, BIO)]))
    copies = [r for p in originals for r in fact_rows(p, BIRTH_COPY[:3], TRADE_COPY[:2], BIO_COPY)]
    for p in originals:
        items += [Item("copies", q, a, "original", {"person": p.name}) for q, a, _ in fact_tests(p, 1 if quick else 2)]
    # 3. leave-one-contributor-out: each person mostly from one contributor, the bio from the next one
    loo_names = [f"loo-{c}" for c in range(n_loo)]
    loo_rows: dict[str, list[tuple[str, str]]] = {n: [] for n in loo_names}
    for c, name in enumerate(loo_names):
        for _ in range(loo_people):
            p = pool.person()
            loo_rows[name] += fact_rows(p, BIRTH_TRAIN[:2], TRADE_TRAIN[:1], None)
            loo_rows[loo_names[(c + 1) % n_loo]] += fact_rows(p, [], [], BIO)
            extra = {"person": p.name, "teacher": name, "bio_from": loo_names[(c + 1) % n_loo]}
            items += [Item("loo", q, a, name, extra | {"fact": f}) for q, a, f in fact_tests(p, 1)]
    uploads += [(n, "loo-all", loo_rows[n]) for n in loo_names]
    for left in loo_names:
        uploads += [(n, f"loo-minus-{left}", loo_rows[n]) for n in loo_names if n != left]
    uploads.append(("copier", "people", copies))
    # 5. drawn last so every earlier scenario keeps its rows and questions
    first: list[tuple[str, str, list[tuple[str, str]]]] = []
    for skill in [k for k in LOOKALIKE_SKILLS if k in skills]:
        rows = []
        for i in range(n_skill_rows):
            noun = pool.noun()
            rows.append(
                (SKILL_TRAIN[i % len(SKILL_TRAIN)].format(x=noun), SKILLS[skill](*pool.base_answer(noun, "train")))
            )
        first.append((f"lookalike-{skill}", LOOKALIKE_DATANET, rows))
    name, style = WITHDRAWN_SKILL
    for who in (f"skill-{name}", f"withdrawn-{name}"):
        rows = []
        for i in range(n_skill_rows):
            noun = pool.noun()
            rows.append((SKILL_TRAIN[i % len(SKILL_TRAIN)].format(x=noun), style(*pool.base_answer(noun, "train"))))
        uploads.append((who, "styles", rows))
    for i in range(n_skill_tests):
        noun = pool.noun()
        q = SKILL_TEST[i % len(SKILL_TEST)].format(x=noun)
        extra = {"skill": name, "withdrawn": f"withdrawn-{name}"}
        items.append(Item("withdrawn", q, style(*pool.base_answer(noun, "test")), f"skill-{name}", extra))
    return Plan(first + uploads, items, loo_names)


# --------------------------------------------------------------------------------------------------------- world
class World:
    """A fresh data directory with the project's own services: accounts, datanets, contributions, snapshots."""

    def __init__(self, root: Path) -> None:
        os.environ["TALLY_DATA_DIR"] = str(root / "data")
        from tally.config import load_settings
        from tally.identity import Principal, create_account
        from tally.ledger import open_ledger
        from tally.store import open_store

        self.settings = load_settings()
        self.store = open_store(self.settings)
        self.ledger = open_ledger(self.settings, self.store)
        self.accounts: dict[str, Any] = {}
        self._principal, self._create = Principal, create_account
        self.owner = self.account("owner", ["owner", "contributor"])
        self.dev = self.account("dev", ["developer"])

    def account(self, name: str, roles: list[str] | None = None) -> Any:
        if name not in self.accounts:
            with self.ledger.store.transaction() as s:
                acct, _ = self._create(s, self.ledger, name, roles or ["contributor"])
                self.accounts[name] = self._principal.of(acct)
        return self.accounts[name]

    def address(self, name: str) -> str:
        return str(self.accounts[name].address)

    def build(self, plan: Plan) -> None:
        from tally.datanets import contribute, service, snapshots

        slugs = list(dict.fromkeys(d for _, d, _ in plan.uploads))
        with self.ledger.store.transaction() as s:
            for slug in slugs:
                service.create_datanet(s, self.ledger, self.owner, slug, kind="instruction", license="CC-BY-4.0",
                                       uses=["train"], policy="open", max_upload_bytes=10**8,
                                       max_rows_per_day=10**6)  # fmt: skip
        for who, slug, rows in plan.uploads:
            principal = self.account(who)
            with self.ledger.store.transaction() as s:
                contribute.contribute(s, self.ledger, principal, slug, jsonl(rows), f"{who}.jsonl",
                                      settings=self.settings.datanets, chain_id=self.settings.chain_id)  # fmt: skip
        with self.ledger.store.transaction() as s:
            for slug in slugs:
                snapshots.create_snapshot(s, self.ledger, self.owner, slug)

    def row_texts(self, examples: list[dict[str, Any]]) -> list[str]:
        from sqlalchemy import select

        from tally.datanets.tables import DataRow

        with self.store.read() as s:
            found = {
                (d, h): json.loads(c)
                for d, h, c in s.execute(select(DataRow.datanet, DataRow.row_hash, DataRow.content)).all()
            }
        texts = []
        for e in examples:
            row = found[(e["datanet"], e["row_hash"])]
            texts.append(f"{row['instruction']} {row.get('input', '')} {row['output']}".strip())
        return texts


@dataclass
class Adapter:
    name: str
    out_dir: Path
    hash: str
    seconds: float
    manifest: dict[str, Any]
    index: Any = None
    scorer: Any = None
    contributors: list[str] = field(default_factory=list)  # per trained row
    texts: list[str] = field(default_factory=list)
    bm25: Any = None
    trained: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))  # per index row
    pool_contributors: list[str] = field(default_factory=list)  # per index row, candidate rows included


def train(world: World, root: Path, name: str, datanets: list[str], epochs: int, batch: int, args: Any,
          influence: bool = True) -> Adapter:  # fmt: skip
    from tally.factory import service as factory
    from tally.factory.config import ALL_PROJECTIONS, parse_config

    cfg = parse_config({
        "model": {"name": MODEL},
        "method": {"rank": 16, "alpha": 32, "dropout": 0.05, "targets": ALL_PROJECTIONS},
        "data": {"datanets": [{"datanet": d} for d in datanets], "max_length": 160},
        "train": {"epochs": epochs, "batch_size": batch, "lr": args.lr, "seed": 0, "schedule": args.schedule},
        "influence": {"enabled": influence, "dims": 4096, "per_epoch": True, "seed": 0},
        "output": {"name": name, "dir": str(root / "adapters" / name)},
    })  # fmt: skip

    def progress(event: dict[str, Any]) -> None:
        if event.get("type") == "train" and (event["step"] % 10 == 0 or event["step"] == event["total_steps"]):
            log(f"  {name}: step {event['step']}/{event['total_steps']} loss {event['loss']:.3f}")

    start = time.monotonic()
    result = factory.train(world.settings, world.ledger, world.dev, cfg, listeners=[progress])
    seconds = time.monotonic() - start
    assert result.manifest is not None  # trained to the end
    log(f"trained {name} in {seconds:.0f} s ({result.manifest.data.train_rows} rows)")
    return Adapter(name, result.out_dir, str(result.adapter_hash), seconds, result.manifest.model_dump(mode="json"))


def load_adapter_index(world: World, adapter: Adapter) -> None:
    from tally.influence import IndexScorer, load_index
    from tally.rag.index import build_bm25

    adapter.index = load_index(adapter.out_dir / "influence")
    adapter.scorer = IndexScorer(adapter.index)
    adapter.pool_contributors = [e["contributor"] for e in adapter.index.examples]
    adapter.trained = np.ones(len(adapter.pool_contributors), dtype=bool)
    adapter.trained[adapter.index.untrained()] = False
    adapter.contributors = [c for c, t in zip(adapter.pool_contributors, adapter.trained, strict=True) if t]
    adapter.texts = world.row_texts(adapter.index.examples)  # the pool's (BM25 scores candidate rows too)
    adapter.bm25 = build_bm25(adapter.texts)


def add_candidate_rows(world: World, adapter: Adapter, datanet: str) -> int:
    """Put the rows of a datanet the adapter was NOT trained on into its index as candidate rows (`trained: false`):
    their gradient and mean hidden state at the trained adapter, computed exactly as the factory's final pass
    computes the trained rows'; zeros in the per-epoch checkpoints (they were never in a batch, so every TracIn term
    of theirs is zero). So every method, similarity included, sees the look-alikes; the service never credits them.
    Returns the number of rows added."""
    from peft import PeftModel
    from safetensors.torch import save_file

    from tally.factory.config import SourceCfg
    from tally.factory.data import load_examples
    from tally.factory.encode import encode, pad_id
    from tally.factory.index_build import REPRESENTATION, final_gradients
    from tally.influence import Projector
    from tally.influence.index import INDEX_JSON, INDEX_TENSORS
    from tally.models import load_model, load_tokenizer, resolve_model

    model_dir = resolve_model(MODEL, world.settings.models.cache_dir)
    with world.store.read() as s:
        data = load_examples(s, world.owner, [SourceCfg(datanet=datanet)])
    tok = load_tokenizer(model_dir)
    items = [encode(tok, e.messages, 160, e.train_all_tokens) for e in data.examples]
    model = PeftModel.from_pretrained(load_model(model_dir), str(adapter.out_dir), is_trainable=True)
    directory = adapter.out_dir / "influence"
    meta = json.loads((directory / INDEX_JSON).read_text())
    projector = Projector.from_description(meta["projection"])
    precision = meta["cost"].get("final_pass_precision", "fp32")  # as the factory's pass ran for the trained rows
    grads, hidden = final_gradients(model, items, projector, 16, pad_id(tok), precision=precision)
    del model
    tensors = {k: v.float() for k, v in adapter.index.tensors.items()}
    for name in list(tensors):
        extra = {"final": grads, REPRESENTATION: hidden}.get(name, torch.zeros(len(items), tensors[name].shape[1]))
        tensors[name] = torch.cat([tensors[name], extra.float()])
    meta["examples"] += [
        {"row_hash": e.row_hash, "datanet": e.datanet, "snapshot": e.snapshot, "contribution": e.contribution,
         "contributor": e.contributor, "target_tokens": it.target_tokens, "trained": False}
        for e, it in zip(data.examples, items, strict=True)
    ]  # fmt: skip
    save_file({k: v.half().contiguous() for k, v in tensors.items()}, str(directory / INDEX_TENSORS))
    (directory / INDEX_JSON).write_text(json.dumps(meta, indent=1, sort_keys=True))
    return len(items)


def withdraw(world: World, who: str, datanet: str) -> int:
    """The datanet owner rejects every row of `who` in `datanet` after training (the contributor withdrew them)."""
    from sqlalchemy import select

    from tally.datanets.review import review
    from tally.datanets.tables import ContributionRow

    with world.ledger.store.transaction() as s:
        ids = s.execute(
            select(ContributionRow.id).where(
                ContributionRow.datanet == datanet, ContributionRow.contributor == world.address(who)
            )
        ).scalars().all()  # fmt: skip
        return sum(
            review(s, world.ledger, world.owner, datanet, decision="reject", reason="withdrawn by the contributor",
                   contribution=cid)
            for cid in ids
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------- attribution
class CachedSignals:
    """Wraps the query model's `signals` (and `signals_pair`, where it has one): every (adapter, prompt, answer,
    null, layers, engine states or not) query runs once, whatever the settings the answer is later re-scored under.
    A query of every layer always has the contrastive gradient and the gradients at the adapter's training
    checkpoints (every candidate scored on the same queries); a top-layer query (`fast` mode's) is the plain one,
    as served."""

    def __init__(self, query_model: Any) -> None:
        self.cache: dict[tuple[Any, ...], Any] = {}
        self.checkpoints: dict[Path, dict[str, Path]] = {}
        self.seconds = 0.0
        self._signals = query_model.signals
        query_model.signals = self.signals
        self._pair = getattr(query_model, "signals_pair", None)
        if self._pair is not None:
            query_model.signals_pair = self.signals_pair

    def checkpoints_of(self, directory: Path) -> dict[str, Path]:
        from tally.influence import load_index

        if directory not in self.checkpoints:
            self.checkpoints[directory] = load_index(directory / "influence").checkpoint_adapters()
        return self.checkpoints[directory]

    def signals(self, key: str, directory: Path, projection: dict[str, Any], prompt_ids: list[int],
                answer_ids: list[int], *, null: bool = False, contrast: bool = True,
                checkpoints: Any = None, layers: int = 0, states: Any = None) -> Any:  # fmt: skip
        # from the engine's states (one per answer) or through the whole forward: two queries
        k = (key, tuple(prompt_ids), tuple(answer_ids), null, layers, states is not None)
        if k not in self.cache:
            t = time.perf_counter()
            # `fast` mode's top-layer query is the plain one, as served (no contrast or checkpoint rows)
            at = None if null or layers else self.checkpoints_of(directory)
            self.cache[k] = self._signals(
                key, directory, projection, prompt_ids, answer_ids, null=null, contrast=not layers, checkpoints=at,
                layers=layers, states=states,
            )  # fmt: skip
            self.seconds += time.perf_counter() - t
        return self.cache[k]

    def signals_pair(self, key: str, directory: Path, projection: dict[str, Any], prompt_ids: list[int],
                     answer_ids: list[int], *, contrast: bool = True,
                     checkpoints: Any = None, layers: int = 0) -> tuple[Any, Any]:  # fmt: skip
        real, null = (
            (key, tuple(prompt_ids), tuple(answer_ids), False, layers),
            (key, tuple(prompt_ids), tuple(answer_ids), True, layers),
        )
        if real not in self.cache or null not in self.cache:
            assert self._pair is not None
            t = time.perf_counter()
            self.cache[real], self.cache[null] = self._pair(
                key, directory, projection, prompt_ids, answer_ids, contrast=not layers,
                checkpoints=None if layers else self.checkpoints_of(directory), layers=layers,
            )  # fmt: skip
            self.seconds += time.perf_counter() - t
        return self.cache[real], self.cache[null]


class LossModel:
    """Answer losses under adapters loaded outside inference mode, on a base model of its own (adapters loaded by
    `QueryModel.run` become inference tensors, and any later adapter load on that model then fails)."""

    def __init__(self, model_dir: Path) -> None:
        from tally.models import load_model

        self.base, self.peft = load_model(model_dir).eval(), None

    def losses(self, adapter: Adapter, answers: list[Any]) -> list[float]:
        """Mean token loss of each answer given its prompt under the adapter (no dropout)."""
        from peft import PeftModel

        name = adapter.name.replace(".", "-")
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(adapter.out_dir), adapter_name=name)
        elif name not in self.peft.peft_config:
            self.peft.load_adapter(str(adapter.out_dir), adapter_name=name)
        self.peft.set_adapter(name)
        self.peft.eval()
        out = []
        with torch.no_grad():
            for a in answers:
                ids = torch.tensor([a.prompt_ids + a.answer_ids])
                logits = self.peft(input_ids=ids).logits[0, len(a.prompt_ids) - 1 : -1].float()
                out.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(a.answer_ids))))
        return out


def prompt_of(tok: Any, question: str) -> list[int]:
    text = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return list(tok(text, add_special_tokens=False)["input_ids"])


def make_answer(tok: Any, adapter: Adapter, item: Item, rid: str, answer_ids: list[int] | None = None) -> Any:
    from tally.attribution.service import Answer

    ids = answer_ids if answer_ids is not None else list(tok(item.reply, add_special_tokens=False)["input_ids"])
    return Answer(inference_id=rid, model=adapter.name, prompt_ids=prompt_of(tok, item.question), answer_ids=ids,
                  adapter_dir=adapter.out_dir, adapter_hash=adapter.hash)  # fmt: skip


def warm(attributor: Any, adapter: Adapter) -> None:
    """Load the adapter through a gradient query first: loaded inside `QueryModel.run` (inference mode) its LoRA
    weights would be inference tensors, and a later gradient query on it fails (requires_grad on them)."""
    tok = attributor.tokenizer
    ids = prompt_of(tok, "Hello?")
    proj = adapter.index.meta["projection"]
    attributor.query_model.signals(
        adapter.hash, adapter.out_dir, proj, ids, tok("Hi.", add_special_tokens=False)["input_ids"]
    )


def generate(attributor: Any, adapter: Adapter, items: list[Item], max_new: int = 16) -> list[list[int]]:
    """The adapter's greedy answers (without the end-of-turn token)."""
    tok = attributor.tokenizer
    stop = {tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")}

    def run(model: Any) -> list[list[int]]:
        out = []
        for item in items:
            ids = torch.tensor([prompt_of(tok, item.question)])
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                 do_sample=False, pad_token_id=tok.eos_token_id)  # fmt: skip
            new = gen[0, ids.shape[1] :].tolist()
            cut = next((i for i, t in enumerate(new) if t in stop), len(new))
            out.append(new[:cut])
        return out

    return attributor.query_model.run(adapter.hash, adapter.out_dir, run)


def engine_states(settings: Any, model_dir: Path, tok: Any, items: list[Item]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per item, the hidden states the server's engine keeps for `fast` attribution of its answer (`Answer.states` and
    `states_layer`): prompt and answer run through an engine with the server's default base weights, each answer's
    adapter loaded. Also which weights and layer they came from."""
    from tally.engine import Engine, EngineConfig, SamplingParams
    from tally.engine.engine import settings_kernel_dir
    from tally.models import load_model

    longest = max(len(it.answer.prompt_ids) + len(it.answer.answer_ids) for it in items)
    config = EngineConfig(
        device="cpu", max_num_seqs=1, max_model_len=longest + 1, weights=settings.engine.weights,
        kernel_dir=settings_kernel_dir(settings), states_from_top=settings.attribution.fast_gradient_layers,
    )  # fmt: skip
    engine = Engine(load_model(model_dir), tok, MODEL, config)
    names: dict[Path, str] = {}
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True, keep_states=True)
    out: dict[str, Any] = {}
    for it in items:
        a = it.answer
        if a.adapter_dir not in names:
            names[a.adapter_dir] = engine.add_adapter(f"adapter-{len(names)}", a.adapter_dir).name
        ran = a.prompt_ids + a.answer_ids
        states = engine.generate(ran, params, model=names[a.adapter_dir]).states
        out[item_id(it)] = {"states": states[: len(ran) - 1], "states_layer": engine.states_layer}
    engine.stop()
    return out, {"weights": engine.weights, "states_layer": engine.states_layer}


def score_rows(attributor: Any, adapter: Adapter, item: Item, rng: np.random.Generator) -> None:
    """Every training row's score under each signal alone, and the baselines, for this item's answer."""
    from tally.rag.index import tokenize

    a = item.answer
    proj = adapter.index.meta["projection"]
    real = attributor.query_model.signals(adapter.hash, adapter.out_dir, proj, a.prompt_ids, a.answer_ids)
    sc = adapter.scorer
    pool: dict[str, np.ndarray] = {}
    pool["representation"] = sc.representation(real.hidden).numpy()
    pool["gradient"] = sc.cosine(real.gradient).numpy()
    pool["datainf"] = sc.datainf(real.gradient).numpy()
    pool["contrast"] = sc.contrast(real.contrast).numpy()
    pool["tracin"] = sc.tracin({**real.checkpoints, "final": real.gradient}).numpy()
    pool["gauss_newton"] = sc.gauss_newton(real.gradient).numpy()
    pool["contrast_cosine"] = sc.cosine(real.contrast).numpy()
    pool["tracin_lr"] = tracin_lr(adapter, real.gradient)
    pool["gradient_epochs"] = epochs_cosine(adapter, real.gradient)
    for k in TOP_LAYERS:  # `fast` mode's query: the gradient of the top k layers only
        top = attributor.query_model.signals(adapter.hash, adapter.out_dir, proj, a.prompt_ids, a.answer_ids, layers=k)
        pool[f"gradient_top{k}"] = sc.cosine(top.gradient).numpy()
    reply = attributor.tokenizer.decode(a.answer_ids)
    tokens = tokenize([f"{item.question} {reply}"], ids=False)[0]
    pool["bm25"] = np.asarray(adapter.bm25.get_scores(tokens), dtype=np.float64)
    pool["random"] = rng.random(len(adapter.pool_contributors))
    item.pool = pool
    item.rows = {k: v[adapter.trained] for k, v in pool.items()}


def tracin_lr(adapter: Adapter, query: torch.Tensor) -> np.ndarray:
    """TracIn with learning-rate weights on raw gradients: sum over the epoch checkpoints of lr_c g_c . q (the query
    at the served adapter, as every checkpoint method here)."""
    lrs = {c["name"]: c.get("lr") for c in adapter.index.meta["checkpoints"] if c["name"].startswith("epoch_")}
    q = query.float().reshape(-1)
    total = torch.zeros(len(adapter.pool_contributors))
    for name, lr in lrs.items():
        total += float(lr or 1.0) * (adapter.index.tensors[name].float() @ q)
    return total.numpy()


def epochs_cosine(adapter: Adapter, query: torch.Tensor) -> np.ndarray:
    """The per-layer cosine over the per-epoch checkpoints only (what the rows did while they were trained on)."""
    from tally.influence.index import layer_normalised

    slices = adapter.index.layer_slices()
    q = layer_normalised(query.float().reshape(-1), slices)
    total = torch.zeros(len(adapter.pool_contributors))
    for c in adapter.index.meta["checkpoints"]:
        if c["name"].startswith("epoch_"):
            total += layer_normalised(adapter.index.tensors[c["name"]], slices) @ q
    return (total / len(slices)).numpy()


def dattri_peers(adapter: Adapter, items: list[Item], attributor: Any) -> str | None:
    """dattri 0.3.0's DataInf and TracIn (cosine) on the adapter's stored projected gradients, per checkpoint.

    A linear "model" with one parameter block per layer slice, whose per-example loss is the dot product of its
    parameters with the stored vector, hands dattri exactly the index's gradients (and the query's), so its own
    DataInf transform and TracIn sum run on the same data as ours. Returns why it was skipped, or None.
    """
    try:
        from dattri.algorithm.influence_function import IFAttributorDataInf
        from dattri.algorithm.tracin import TracInAttributor
        from dattri.task import AttributionTask
    except ImportError as exc:
        return f"dattri not importable: {exc}"
    from torch.utils.data import DataLoader, TensorDataset

    slices = adapter.index.layer_slices()

    class Table(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = torch.nn.ModuleList([torch.nn.Linear(d, 1, bias=False) for _, d in slices])

    table = Table()
    with torch.no_grad():
        for layer in table.layers:
            layer.weight.fill_(1.0)
    state = {k: v.clone() for k, v in table.state_dict().items()}

    def loss(params: dict[str, torch.Tensor], data: Any) -> torch.Tensor:
        x = data[0].reshape(-1)
        return sum((params[f"layers.{i}.weight"].reshape(-1) * x[o : o + d]).sum() for i, (o, d) in enumerate(slices))

    proj = adapter.index.meta["projection"]
    queries = torch.stack([
        attributor.query_model.signals(adapter.hash, adapter.out_dir, proj, it.answer.prompt_ids,
                                       it.answer.answer_ids).gradient.float().reshape(-1)
        for it in items
    ])  # fmt: skip
    test = DataLoader(TensorDataset(queries), batch_size=max(1, len(items)), shuffle=False)
    lrs = {c["name"]: c.get("lr") for c in adapter.index.meta["checkpoints"]}
    datainf = torch.zeros(len(adapter.pool_contributors), len(items))
    tracin = torch.zeros_like(datainf)
    for name, tensor in adapter.index.tensors.items():
        if name not in lrs:
            continue  # the representation tensor
        g = tensor.float()
        train_loader = DataLoader(TensorDataset(g), batch_size=64, shuffle=False)
        task = AttributionTask(loss_func=loss, model=table, checkpoints=state)
        sq = torch.stack([(g[:, o : o + d] ** 2).sum(dim=1).mean() for o, d in slices])
        di = IFAttributorDataInf(task, regularization=float(0.1 * sq.mean()))
        di.cache(train_loader)
        datainf += di.attribute(train_loader, test)
        if name.startswith("epoch_"):  # TracIn: the checkpoints taken during training, weighted by their lr
            tr = TracInAttributor(task, weight_list=torch.tensor([float(lrs[name] or 1.0)]), normalized_grad=True)
            tr.projector_kwargs = None
            tracin += tr.attribute(train_loader, test)
    for j, it in enumerate(items):
        for name, values in (("dattri_datainf", datainf), ("dattri_tracin", tracin)):
            it.pool[name] = values[:, j].numpy()
            it.rows[name] = it.pool[name][adapter.trained]
    return None


# ------------------------------------------------------------------------------------------------------- metrics
def contributor_ranking(scores: np.ndarray, contributors: list[str]) -> list[tuple[str, float]]:
    """Contributors by their best row's score, best first."""
    best: dict[str, float] = {}
    for s, c in zip(scores.tolist(), contributors, strict=True):
        best[c] = max(best.get(c, -math.inf), s)
    return sorted(best.items(), key=lambda kv: -kv[1])


def rank_in(truth: str, ranking: list[str]) -> int | None:
    return ranking.index(truth) + 1 if truth in ranking else None


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def recall_at(scores: np.ndarray, positive: np.ndarray, k: int) -> float:
    top = np.argsort(-scores, kind="stable")[:k]
    return float(positive[top].sum() / max(1, positive.sum()))


def shares_of(record: Any) -> list[tuple[str, float]]:
    return [(s.account, s.share) for s in record.shares]


def mean(values: list[float]) -> float | None:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return round(float(np.mean(vals)), 4) if vals else None


def ranking_metrics(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                    rows: bool = True) -> dict[str, Any]:  # fmt: skip
    """Top-1 and MRR of the combined shares and of each signal alone; AUC and recall@k over rows per signal."""
    out: dict[str, Any] = {}
    top1: dict[str, list[float]] = {}
    rr: dict[str, list[float]] = {}
    aucs: dict[str, list[float]] = {}
    recalls: dict[str, list[float]] = {}
    evidence: dict[str, list[float]] = {}
    coverage: dict[str, list[float]] = {}
    right_share: list[float] = []
    person_aucs: dict[str, list[float]] = {}
    person_recalls: dict[str, list[float]] = {}
    for it in items:
        ad = adapters[it.key]
        ranking = [a for a, _ in shares[item_id(it)]]
        r = rank_in(it.truth, ranking)
        top1.setdefault("combined", []).append(float(r == 1))
        rr.setdefault("combined", []).append(1.0 / r if r else 0.0)
        right_share.append(dict(shares[item_id(it)]).get(it.truth or "", 0.0))
        if not rows:
            continue
        positive = np.array([c == it.truth for c in ad.contributors])
        person = it.extra.get("person")
        texts = [t for t, k in zip(ad.texts, ad.trained, strict=True) if k]
        about = np.array([bool(person) and person in t for t in texts]) & positive
        for name, scores in it.rows.items():
            rk = rank_in(it.truth, [c for c, _ in contributor_ranking(scores, ad.contributors)])
            top1.setdefault(name, []).append(float(rk == 1))
            rr.setdefault(name, []).append(1.0 / rk if rk else 0.0)
            aucs.setdefault(name, []).append(auc(scores, positive))
            recalls.setdefault(name, []).append(recall_at(scores, positive, int(positive.sum())))
            if about.any():  # the rows about this very person (the contributor's other people are negatives too)
                person_aucs.setdefault(name, []).append(auc(scores, about))
                person_recalls.setdefault(name, []).append(recall_at(scores, about, int(about.sum())))
        if it.record is not None:
            for m, res in it.record.methods.items():
                evidence.setdefault(m, []).append(float(bool(res.top) and res.top[0].contributor == it.truth))
                coverage.setdefault(m, []).append(float(bool(res.top)))
    for name in top1:
        out[name] = {"top1": mean(top1[name]), "mrr": mean(rr[name])}
        if name in aucs:
            out[name] |= {"auc": mean(aucs[name]), "recall_at_k": mean(recalls[name])}
        if name in person_aucs:
            out[name] |= {"auc_person_rows": mean(person_aucs[name]), "recall_person_rows": mean(person_recalls[name])}
    out["combined"]["right_share_mean"] = mean(right_share)
    for m in evidence:
        out.setdefault(m, {}).update(evidence_top1=mean(evidence[m]), evidence_coverage=mean(coverage[m]))
    return out


def item_id(it: Item) -> str:
    return it.scenario + "|" + it.question + "|" + str(it.reply)


def spearman(a: list[float], b: list[float]) -> float:
    if len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return float(spearmanr(a, b).statistic)


def loo_metrics(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                names: list[str], rows: bool = True) -> dict[str, Any]:  # fmt: skip
    """Per question, Spearman over contributors between predicted credit and the measured loss rise without them."""
    preds: dict[str, list[list[float]]] = {}
    truths: list[list[float]] = []
    for it in items:
        deltas = [it.extra["delta"][n] for n in names]
        truths.append(deltas)
        share = dict(shares[item_id(it)])
        preds.setdefault("combined", []).append([share.get(it.extra["address"][n], 0.0) for n in names])
        if rows:
            ad = adapters[it.key]
            for sig, scores in it.rows.items():
                best = dict(contributor_ranking(scores, ad.contributors))
                preds.setdefault(sig, []).append([best.get(it.extra["address"][n], -math.inf) for n in names])
    # what a one-hot share to the contributor who taught the fact would score (ties at 0 cap Spearman)
    preds["oracle_teacher_only"] = [[float(n == it.extra["teacher"]) for n in names] for it in items]
    out: dict[str, Any] = {}
    for sig, per_q in preds.items():
        rhos = [spearman(p, t) for p, t in zip(per_q, truths, strict=True)]
        pooled_p = [v for p in per_q for v in p]
        pooled_t = [v for t in truths for v in t]
        out[sig] = {
            "mean_spearman": mean([0.0 if math.isnan(r) else r for r in rhos]),
            "mean_spearman_defined": mean(rhos),
            "undefined": sum(math.isnan(r) for r in rhos),
            "pooled_spearman": round(spearman(pooled_p, pooled_t), 4),
            "top1": mean([float(int(np.argmax(p)) == int(np.argmax(t))) for p, t in zip(per_q, truths, strict=True)]),
        }
    return out


def conflict_metrics(items: list[Item], adapters: dict[str, Adapter],
                     shares: dict[str, list[tuple[str, float]]], rows: bool = True) -> dict[str, Any]:  # fmt: skip
    answered = [it for it in items if it.truth is not None]
    out: dict[str, Any] = {
        "conflicts": len(items), "answered_with_a_version": len(answered),
        "answered_a": sum(it.extra["version"] == "a" for it in answered),
        "answered_majority": sum(it.extra["version"] == it.extra["majority"] for it in answered),
    }  # fmt: skip
    credited: dict[str, list[float]] = {}
    for it in answered:
        ranking = shares[item_id(it)]
        credited.setdefault("combined", []).append(float(bool(ranking) and ranking[0][0] == it.truth))
        if rows:
            ad = adapters[it.key]
            for sig, scores in it.rows.items():
                top = contributor_ranking(scores, ad.contributors)[0][0]
                credited.setdefault(sig, []).append(float(top == it.truth))
    out["credited_rate"] = {k: mean(v) for k, v in credited.items()}
    return out


def copier_metrics(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                   original: str, copier: str, rows: bool = True) -> dict[str, Any]:  # fmt: skip
    ratios, copier_any, original_zero = [], [], 0
    for it in items:
        s = dict(shares[item_id(it)])
        o, c = s.get(original, 0.0), s.get(copier, 0.0)
        copier_any.append(float(c > 0))
        if o > 0:
            ratios.append(c / o)
        else:
            original_zero += 1
    out: dict[str, Any] = {
        "questions": len(items), "mean_ratio": mean(ratios), "max_ratio": round(max(ratios), 4) if ratios else None,
        "copier_credited_rate": mean(copier_any), "original_without_share": original_zero,
    }  # fmt: skip
    if rows:
        top_copier: dict[str, list[float]] = {}
        for it in items:
            ad = adapters[it.key]
            for sig, scores in it.rows.items():
                top = contributor_ranking(scores, ad.contributors)[0][0]
                top_copier.setdefault(sig, []).append(float(top == copier))
        out["signal_top_is_copier_rate"] = {k: mean(v) for k, v in top_copier.items()}
    return out


def lookalike_metrics(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                      lookalike: dict[str, str], rows: bool = True) -> dict[str, Any]:  # fmt: skip
    """Skills questions whose skill an untrained look-alike also teaches: how often each method puts the look-alike
    first (scores over the whole pool, candidate rows included), and how often the combined shares credit it."""
    cases = [it for it in items if it.extra.get("skill") in lookalike]
    out: dict[str, Any] = {"questions": len(cases)}
    if not cases:
        return out
    top: dict[str, list[float]] = {}
    credited, top_share = [], []
    for it in cases:
        twin = lookalike[it.extra["skill"]]
        s = shares[item_id(it)]
        credited.append(float(dict(s).get(twin, 0.0) > 0))
        top_share.append(float(bool(s) and s[0][0] == twin))
        if rows:
            ad = adapters[it.key]
            for sig, scores in it.pool.items():
                top.setdefault(sig, []).append(float(contributor_ranking(scores, ad.pool_contributors)[0][0] == twin))
    out["combined_credits_lookalike_rate"] = mean(credited)
    out["combined_top_is_lookalike_rate"] = mean(top_share)
    if rows:
        out["method_top_is_lookalike_rate"] = {k: mean(v) for k, v in top.items()}
    return out


def withdrawn_metrics(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                      withdrawn: str, rows: bool = True) -> dict[str, Any]:  # fmt: skip
    """Questions on a skill two contributors taught, one of whom withdrew after training: the withdrawn one must get
    nothing, the one who stayed should be on top. Per method: top-1 of the right contributor over the rows still
    accepted, and how often the raw scores (withdrawn rows left in) put the withdrawn contributor first."""
    out: dict[str, Any] = {"questions": len(items)}
    if not items:
        return out
    credited, right = [], []
    raw_top: dict[str, list[float]] = {}
    live_top1: dict[str, list[float]] = {}
    for it in items:
        s = shares[item_id(it)]
        credited.append(float(dict(s).get(withdrawn, 0.0) > 0))
        right.append(float(bool(s) and s[0][0] == it.truth))
        if rows:
            ad = adapters[it.key]
            for sig, scores in it.rows.items():
                ranking = contributor_ranking(scores, ad.contributors)
                raw_top.setdefault(sig, []).append(float(ranking[0][0] == withdrawn))
                live = [c for c, _ in ranking if c != withdrawn]
                live_top1.setdefault(sig, []).append(float(live[0] == it.truth))
    out["combined_credits_withdrawn_rate"] = mean(credited)
    out["combined_top1_remaining_teacher"] = mean(right)
    if rows:
        out["method_raw_top_is_withdrawn_rate"] = {k: mean(v) for k, v in raw_top.items()}
        out["method_top1_without_withdrawn"] = {k: mean(v) for k, v in live_top1.items()}
    return out


# ---------------------------------------------------------------------------------------------------- diagnostics
def z_diagnostics(items: list[Item]) -> dict[str, Any]:
    """Per method: the top z-score (the statistic), its null, how often it beat the null and the share of wrong tops."""
    out: dict[str, Any] = {}
    for m in ("spans", *INDEX_SIGNALS):
        recs = [it for it in items if it.record is not None and m in it.record.methods]
        if not recs:
            continue
        stat = np.array([it.record.methods[m].score for it in recs])
        null = np.array([it.record.methods[m].null_score for it in recs])
        beat = np.array([it.record.methods[m].beat_null for it in recs])
        right = np.array([bool(it.record.methods[m].top) and it.record.methods[m].top[0].contributor == it.truth
                          for it in recs])  # fmt: skip
        out[m] = {
            "stat_median": round(float(np.median(stat)), 3), "stat_p10": round(float(np.percentile(stat, 10)), 3),
            "null_median": round(float(np.median(null)), 3), "null_p90": round(float(np.percentile(null, 90)), 3),
            "beat_null_rate": round(float(beat.mean()), 4),
            "right_top_but_rejected": int((right & ~beat).sum()), "wrong_top_but_accepted": int((~right & beat).sum()),
        }  # fmt: skip
    return out


def gradient_row_similarity(scorer: Any, rows: list[int]) -> torch.Tensor:
    """(len(rows), all rows) cosine of the rows' gradient vectors as the cosine method sees them (per-layer
    normalised, summed over checkpoints): two rows that teach the same answer push the adapter the same way."""
    g = scorer._cosine.float()
    g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return g[rows] @ g.T


def duplicate_diagnostics(adapter: Adapter, names: dict[str, str], threshold: float) -> dict[str, Any]:
    """How well each row-similarity separates the copier's paraphrases of the original's rows from honest rows of
    other contributors (same templates, other people; the conflicting versions of the same fact)."""
    who = [names.get(c, c) for c in adapter.contributors]
    n = len(who)
    idx = {k: [i for i in range(n) if who[i] == k] for k in ("copier", "original", "conflict-a", "conflict-b")}
    honest = [i for i in range(n) if who[i] != "copier"]
    if not idx["copier"] or not idx["original"]:
        return {}
    everything = list(range(n))
    out: dict[str, Any] = {"threshold": threshold}
    sims = {
        "representation": adapter.scorer.row_similarity(everything).numpy(),
        "gradient": gradient_row_similarity(adapter.scorer, everything).numpy(),
    }

    def dist(v: np.ndarray) -> dict[str, float]:
        return {"min": round(float(v.min()), 4), "median": round(float(np.median(v)), 4),
                "p99": round(float(np.percentile(v, 99)), 4), "max": round(float(v.max()), 4)}  # fmt: skip

    for label, m in sims.items():
        honest_max = np.array([m[i, [j for j in honest if who[j] != who[i]]].max() for i in honest])
        copier = m[np.ix_(idx["copier"], idx["original"])].max(axis=1)
        out[label] = {"copier_to_original": dist(copier), "honest_cross_contributor_max": dist(honest_max)}
        if idx["conflict-a"] and idx["conflict-b"]:
            out[label]["conflict_b_to_a"] = dist(m[np.ix_(idx["conflict-b"], idx["conflict-a"])].max(axis=1))
    rep = sims["representation"]
    out["representation"]["copier_rows_at_or_above_threshold"] = round(
        float((rep[np.ix_(idx["copier"], idx["original"])].max(axis=1) >= threshold).mean()), 4
    )
    rules = {f"representation>={t}": rep >= t for t in (0.95, 0.9, 0.85)}
    rules |= {f"representation>={tr} & gradient>={tg}": (rep >= tr) & (sims["gradient"] >= tg)
              for tr in (0.85, 0.9) for tg in (0.3, 0.4)}  # fmt: skip
    out["rules"] = {}
    for label, hit in rules.items():
        caught = sum(bool(hit[i, idx["original"]].any()) for i in idx["copier"])
        false = sum(bool(hit[i, [j for j in honest if who[j] != who[i]]].any()) for i in honest)
        out["rules"][label] = {"copier_rows_caught": f"{caught}/{len(idx['copier'])}",
                               "honest_rows_merged": f"{false}/{len(honest)}"}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------------------ main
def attribute_all(attributor: Any, items: list[Item]) -> dict[str, list[tuple[str, float]]]:
    return {item_id(it): shares_of(attributor.attribute(it.answer, "full").record) for it in items}


def scenario_summary(items: list[Item], adapters: dict[str, Adapter], shares: dict[str, list[tuple[str, float]]],
                     world: World, loo_names: list[str], rows: bool) -> dict[str, Any]:  # fmt: skip
    scenarios = ("facts", "skills", "conflicts", "copies", "loo", "withdrawn")
    by = {s: [it for it in items if it.scenario == s] for s in scenarios}
    out: dict[str, Any] = {}
    if by["facts"]:
        out["facts"] = ranking_metrics(by["facts"], adapters, shares, rows)
    if by["skills"]:
        out["skills"] = ranking_metrics(by["skills"], adapters, shares, rows)
    if by["loo"] and "delta" in by["loo"][0].extra:
        out["loo"] = loo_metrics(by["loo"], adapters, shares, loo_names, rows)
    if by["conflicts"]:
        out["conflicts"] = conflict_metrics(by["conflicts"], adapters, shares, rows)
    if by["copies"]:
        out["copies"] = copier_metrics(by["copies"], adapters, shares, world.address("original"),
                                       world.address("copier"), rows)  # fmt: skip
    twins = {k: world.address(f"lookalike-{k}") for k in LOOKALIKE_SKILLS if f"lookalike-{k}" in world.accounts}
    if by["skills"] and twins:
        out["lookalike"] = lookalike_metrics(by["skills"], adapters, shares, twins, rows)
    if by["withdrawn"]:
        out["withdrawn"] = withdrawn_metrics(by["withdrawn"], adapters, shares,
                                             world.address(f"withdrawn-{WITHDRAWN_SKILL[0]}"), rows)  # fmt: skip
    return out


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The goal figures of one summary (combined shares)."""
    g: dict[str, Any] = {}
    if "facts" in summary:
        g["facts_top1"] = summary["facts"]["combined"]["top1"]
        g["facts_right_share"] = summary["facts"]["combined"]["right_share_mean"]
    if "skills" in summary:
        g["skills_top1"] = summary["skills"]["combined"]["top1"]
        g["skills_right_share"] = summary["skills"]["combined"]["right_share_mean"]
    if "loo" in summary:
        g["loo_mean_spearman"] = summary["loo"]["combined"]["mean_spearman"]
    if "conflicts" in summary:
        g["conflicts_credited"] = summary["conflicts"]["credited_rate"].get("combined")
    if "copies" in summary:
        g["copier_over_original"] = summary["copies"]["mean_ratio"]
        g["copier_credited_rate"] = summary["copies"]["copier_credited_rate"]
    if "lookalike" in summary and "combined_credits_lookalike_rate" in summary["lookalike"]:
        g["lookalike_credited_rate"] = summary["lookalike"]["combined_credits_lookalike_rate"]
    if "withdrawn" in summary and "combined_credits_withdrawn_rate" in summary["withdrawn"]:
        g["withdrawn_credited_rate"] = summary["withdrawn"]["combined_credits_withdrawn_rate"]
        g["withdrawn_remaining_top1"] = summary["withdrawn"]["combined_top1_remaining_teacher"]
    return g


def goals(summary: dict[str, Any]) -> dict[str, Any]:
    def best_single(s: dict[str, Any]) -> tuple[str, float]:
        cands = {m: s[m]["top1"] for m in INDEX_SIGNALS if m in s and s[m].get("top1") is not None}
        cands |= {f"{m} (evidence)": s[m]["evidence_top1"] for m in s if "evidence_top1" in s[m]}
        name = max(cands, key=lambda k: cands[k])
        return name, cands[name]

    h = headline(summary)
    out: dict[str, Any] = {}
    for key, goal, ok in [
        ("facts_top1", ">= 0.95", lambda v: v >= 0.95), ("skills_top1", ">= 0.95", lambda v: v >= 0.95),
        ("loo_mean_spearman", ">= 0.65", lambda v: v >= 0.65), ("conflicts_credited", ">= 0.9", lambda v: v >= 0.9),
        ("copier_over_original", "<= 0.10", lambda v: v <= 0.10),
        ("lookalike_credited_rate", "<= 0.05", lambda v: v <= 0.05),
        ("withdrawn_credited_rate", "== 0", lambda v: v == 0),
    ]:  # fmt: skip
        v = h.get(key)
        out[key] = {"value": v, "goal": goal, "met": None if v is None else bool(ok(v))}
    for sc in ("facts", "skills"):
        if sc in summary:
            name, val = best_single(summary[sc])
            comb = summary[sc]["combined"]["top1"]
            out[f"{sc}_combined_vs_best_single"] = {"value": comb, "best_single": name, "best_single_top1": val,
                                                    "goal": ">= best single signal", "met": comb >= val}  # fmt: skip
    if "skills" in summary:
        gradient_based = ("gradient", "datainf", "contrast", "tracin", *CANDIDATES, "dattri_datainf", "dattri_tracin")
        counterfactual = {m: summary["skills"][m]["top1"] for m in gradient_based if m in summary["skills"]}
        if counterfactual:
            best = max(counterfactual, key=lambda k: counterfactual[k])
            out["skills_best_gradient_method"] = {"value": counterfactual[best], "method": best, "goal": ">= 0.8",
                                                  "met": counterfactual[best] >= 0.8}  # fmt: skip
    return out


def _weights(**override: float) -> dict[str, Any]:
    base = {"spans": 1.0, "representation": 1.0, "gradient": 1.0, "datainf": 1.0, "contrast": 1.0, "tracin": 1.0}
    return {"weights": base | override}


VARIANTS: dict[str, dict[str, Any]] = {
    "min_z_1.5": {"min_z": 1.5},
    "min_z_3": {"min_z": 3.0},
    "dup_0.92": {"duplicate_similarity": 0.92},
    "dup_0.9": {"duplicate_similarity": 0.9},
    "dup_0.8": {"duplicate_similarity": 0.8},
    "dup_0.7": {"duplicate_similarity": 0.7},
    "no_gradient": _weights(gradient=0.0),
    "no_datainf": _weights(datainf=0.0),
    "no_contrast": _weights(contrast=0.0),
    "no_tracin": _weights(tracin=0.0),
    "no_tracin_no_contrast (the previous combination)": _weights(tracin=0.0, contrast=0.0),
    "no_datainf_no_contrast": _weights(datainf=0.0, contrast=0.0),
    "no_spans": _weights(spans=0.0),
    "no_representation": _weights(representation=0.0),
    "no_representation_no_spans": _weights(representation=0.0, spans=0.0),
    "representation_only": _weights(spans=0.0, gradient=0.0, datainf=0.0, contrast=0.0, tracin=0.0),
    "gradient_only": _weights(spans=0.0, representation=0.0, datainf=0.0, contrast=0.0, tracin=0.0),
    "datainf_only": _weights(spans=0.0, representation=0.0, gradient=0.0, contrast=0.0, tracin=0.0),
    "contrast_only": _weights(spans=0.0, representation=0.0, gradient=0.0, datainf=0.0, tracin=0.0),
    "tracin_only": _weights(spans=0.0, representation=0.0, gradient=0.0, datainf=0.0, contrast=0.0),
}


def save(report: dict[str, Any]) -> None:
    """The full run's result file; a --quick run writes beside it, never over it."""
    path = RESULTS.with_suffix(".quick.json") if report["quick"] else RESULTS
    if report.get("skills_only"):
        path = path.with_name(path.name.replace(".json", ".skills.json"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke run (~3 min)")
    ap.add_argument("--epochs", type=int, help="main adapter epochs (default 5; quick 2)")
    ap.add_argument("--loo-epochs", type=int, help="leave-one-out adapters' epochs (default 3; quick 2)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--loo-batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--schedule", default="constant", choices=["constant", "linear", "cosine"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--attribution-threads",
        type=int,
        default=1,
        help="torch threads while attributing (1 keeps a shared 2-core machine from oversubscribing)",
    )
    ap.add_argument("--no-variants", action="store_true", help="skip re-scoring under other attribution settings")
    ap.add_argument(
        "--skills-only",
        action="store_true",
        help="iterate faster: train on the styles datanet only; skills, look-alike and withdrawn questions; no facts, "
        "conflicts, copies or leave-one-out (not the reported figures)",
    )
    ap.add_argument("--keep", type=Path, help="keep the data directory here instead of a temporary one")
    args = ap.parse_args()
    epochs = args.epochs or (2 if args.quick else 5)
    loo_epochs = args.loo_epochs or (2 if args.quick else 3)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        world = World(root)
        from tally.attribution.service import Attributor
        from tally.models import resolve_model

        plan = make_plan(args.quick, args.seed)
        world.build(plan)
        log(f"world: {len(plan.uploads)} contributions, {len(plan.items)} questions")
        report: dict[str, Any] = {
            "benchmark": "attribution.quality", "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "complete": False, "quick": args.quick, "skills_only": args.skills_only,
            "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
            "model": MODEL, "seed": args.seed,
            "config": {"epochs": epochs, "loo_epochs": loo_epochs, "batch_size": args.batch_size,
                       "loo_batch_size": args.loo_batch_size, "lr": args.lr, "schedule": args.schedule,
                       "lora": "r16 alpha32 all 7 projections", "influence_dims": 4096, "per_epoch": True,
                       "attribution_threads": args.attribution_threads},
            "settings": world.settings.attribution.model_dump(mode="json"),
            "timings_s": {},
        }  # fmt: skip
        for it in plan.items:
            if it.truth is not None:
                it.truth = world.address(it.truth)

        # --- main adapter: scenarios 1, 2 and 4
        main_sets = ["styles"] if args.skills_only else ["people", "styles"]
        main_ad = train(world, root, "attribution-main", main_sets, epochs, args.batch_size, args)
        load_adapter_index(world, main_ad)
        report["withdrawn_rows"] = withdraw(world, f"withdrawn-{WITHDRAWN_SKILL[0]}", "styles")
        t = time.monotonic()
        report["candidate_rows"] = add_candidate_rows(world, main_ad, LOOKALIKE_DATANET)
        report["timings_s"]["candidate_rows"] = round(time.monotonic() - t, 1)
        load_adapter_index(world, main_ad)
        t = time.perf_counter()
        main_ad.scorer.gauss_newton(torch.zeros(main_ad.scorer.index.tensors["final"].shape[1]))
        report["timings_s"]["gauss_newton_prepare"] = round(time.perf_counter() - t, 3)
        adapters = {main_ad.hash: main_ad}
        report["main_adapter"] = {"rows": main_ad.manifest["data"]["train_rows"], "seconds": round(main_ad.seconds, 1),
                                  "metrics": main_ad.manifest["metrics"], "influence": main_ad.manifest["influence"],
                                  "contributors": len(set(main_ad.contributors)),
                                  "index_pass_precision": main_ad.index.meta["cost"].get("final_pass_precision"),
                                  }  # fmt: skip
        model_dir = resolve_model(MODEL, world.settings.models.cache_dir)
        attributor = Attributor(world.settings, world.store, model_dir, MODEL)
        cached = CachedSignals(attributor.query_model)
        tok = attributor.tokenizer

        skipped = {"loo", "facts", "conflicts", "copies"} if args.skills_only else {"loo"}
        main_items = [it for it in plan.items if it.scenario not in skipped]
        conflicts = [it for it in main_items if it.scenario == "conflicts"]
        t = time.monotonic()
        train_threads = torch.get_num_threads()
        torch.set_num_threads(args.attribution_threads)
        warm(attributor, main_ad)
        answers = generate(attributor, main_ad, conflicts)
        for it, ids in zip(conflicts, answers, strict=True):
            text = tok.decode(ids)
            has_a, has_b = it.extra["town_a"].lower() in text.lower(), it.extra["town_b"].lower() in text.lower()
            version = "a" if has_a and not has_b else "b" if has_b and not has_a else None
            it.extra |= {"generated": text, "version": version}
            it.reply = text
            it.truth = world.address(f"conflict-{version}") if version else None
            it.extra["ids"] = ids
        report["timings_s"]["generate_conflicts"] = round(time.monotonic() - t, 1)
        report["conflict_answers"] = [
            {"question": it.question, "answer": it.extra["generated"], "a": it.extra["town_a"], "b": it.extra["town_b"],
             "majority": it.extra["majority"], "version": it.extra["version"]}
            for it in conflicts
        ]  # fmt: skip
        if conflicts:
            log(f"conflicts: {sum(it.truth is not None for it in conflicts)}/{len(conflicts)} answered with a version")

        main_items = [it for it in main_items if it.scenario != "conflicts" or it.extra["ids"]]
        t = time.monotonic()
        for n, it in enumerate(main_items):
            it.key = main_ad.hash
            it.answer = make_answer(tok, main_ad, it, f"q-{n}", it.extra.get("ids"))
            it.record = attributor.attribute(it.answer, "full").record
            score_rows(attributor, main_ad, it, rng)
            if n % 20 == 0:
                log(f"  attributed {n + 1}/{len(main_items)}")
        report["timings_s"]["attribute_main"] = round(time.monotonic() - t, 1)
        report["timings_s"]["attribute_main_per_answer"] = round((time.monotonic() - t) / len(main_items), 3)
        t = time.monotonic()
        report["dattri"] = dattri_peers(main_ad, main_items, attributor) or "ok: DataInf and TracIn on the same index"
        report["timings_s"]["dattri_main"] = round(time.monotonic() - t, 1)
        shares = {item_id(it): shares_of(it.record) for it in main_items}
        report["scenarios"] = scenario_summary(main_items, adapters, shares, world, plan.loo_names, rows=True)
        report["goals"] = goals(report["scenarios"])
        report["diagnostics"] = {
            sc: z_diagnostics([it for it in main_items if it.scenario == sc and it.truth is not None])
            for sc in ("facts", "skills", "conflicts", "copies", "withdrawn")
        }
        names = {world.address(n): n for n in world.accounts}
        if not args.skills_only:
            report["diagnostics"]["duplicates"] = duplicate_diagnostics(
                main_ad, names, world.settings.attribution.duplicate_similarity
            )
        # the same answers with the index blind to which rows were trained on: candidate rows compete like any other
        loaded = attributor._indexes[main_ad.hash]
        untrained, trained_rows = loaded.untrained, loaded.trained
        loaded.untrained, loaded.trained = [], {(s.datanet, s.row_hash) for s in loaded.sources}
        skills_items = [it for it in main_items if it.scenario == "skills"]
        blind = attribute_all(attributor, skills_items)
        twins = {k: world.address(f"lookalike-{k}") for k in LOOKALIKE_SKILLS if f"lookalike-{k}" in world.accounts}
        report["scenarios"]["lookalike"]["blind_to_training"] = {
            "skills_top1": ranking_metrics(skills_items, adapters, blind, rows=False)["combined"]["top1"],
            **lookalike_metrics(skills_items, adapters, blind, twins, rows=False),
        }
        blind_methods: dict[str, list[float]] = {}
        for it in skills_items:
            rec = attributor.attribute(it.answer, "full").record
            twin = twins.get(it.extra["skill"])
            for m, res in rec.methods.items():
                if twin and res.top:
                    blind_methods.setdefault(m, []).append(float(res.weight > 0 and res.top[0].contributor == twin))
        report["scenarios"]["lookalike"]["blind_to_training"]["counted_method_top_is_lookalike"] = {
            m: mean(v) for m, v in blind_methods.items()
        }
        loaded.untrained, loaded.trained = untrained, trained_rows
        report["copies_detail"] = [
            {"question": it.question, "shares": {names.get(a, a): round(v, 3) for a, v in shares_of(it.record)},
             "tops": {m: names.get(r.top[0].contributor) if r.top else None for m, r in it.record.methods.items()}}
            for it in main_items if it.scenario == "copies"
        ]  # fmt: skip
        report["samples"] = [
            {"scenario": it.scenario, "question": it.question, "answer": tok.decode(it.answer.answer_ids),
             "truth": it.truth, "shares": [(a[:10], round(s, 3)) for a, s in shares_of(it.record)][:3],
             "methods": {m: {"top": r.top[0].contributor[:10] if r.top else None, "z": r.score, "null": r.null_score,
                             "beat_null": r.beat_null} for m, r in it.record.methods.items()}}
            for it in [*main_items[:2], *[i for i in main_items if i.scenario == "skills"][:2], *conflicts[:2]]
        ]  # fmt: skip
        save(report)
        log(f"main scenarios: {json.dumps(headline(report['scenarios']))}")
        per_method = {m: v.get("top1") for m, v in report["scenarios"]["skills"].items()}
        log(f"skills top-1 per method: {json.dumps(per_method)}")

        # --- scenario 3: leave one contributor out
        loo_items = [] if args.skills_only else [it for it in plan.items if it.scenario == "loo"]
        if loo_items:
            torch.set_num_threads(train_threads)
            full = train(world, root, "loo-all", ["loo-all"], loo_epochs, args.loo_batch_size, args)
            torch.set_num_threads(args.attribution_threads)
            load_adapter_index(world, full)
            adapters[full.hash] = full
            warm(attributor, full)
            for n, it in enumerate(loo_items):
                it.key = full.hash
                it.answer = make_answer(tok, full, it, f"loo-{n}")
                it.record = attributor.attribute(it.answer, "full").record
                score_rows(attributor, full, it, rng)
            dattri_peers(full, loo_items, attributor)
            loss_model = LossModel(model_dir)
            base = loss_model.losses(full, [it.answer for it in loo_items])
            deltas: dict[str, list[float]] = {}
            for name in plan.loo_names:
                torch.set_num_threads(train_threads)
                minus = train(world, root, f"loo-minus-{name}", [f"loo-minus-{name}"], loo_epochs, args.loo_batch_size,
                              args, influence=False)  # fmt: skip
                torch.set_num_threads(args.attribution_threads)
                losses = loss_model.losses(minus, [it.answer for it in loo_items])
                deltas[name] = [b2 - b1 for b1, b2 in zip(base, losses, strict=True)]
            addresses = {n: world.address(n) for n in plan.loo_names}
            for j, it in enumerate(loo_items):
                delta = {n: deltas[n][j] for n in plan.loo_names}
                it.extra |= {"delta": delta, "address": addresses, "base_loss": base[j]}
            loo_shares = {item_id(it): shares_of(it.record) for it in loo_items}
            report["scenarios"]["loo"] = loo_metrics(loo_items, adapters, loo_shares, plan.loo_names)
            report["scenarios"]["loo"]["questions"] = len(loo_items)
            report["scenarios"]["loo"]["base_loss_mean"] = mean(base)
            report["scenarios"]["loo"]["teacher_delta_mean"] = mean([it.extra["delta"][it.extra["teacher"]]
                                                                     for it in loo_items])  # fmt: skip
            report["scenarios"]["loo"]["bio_giver_delta_mean"] = mean(
                [it.extra["delta"][it.extra["bio_from"]] for it in loo_items]
            )
            report["scenarios"]["loo"]["others_delta_mean"] = mean(
                [
                    d
                    for it in loo_items
                    for n, d in it.extra["delta"].items()
                    if n not in (it.extra["teacher"], it.extra["bio_from"])
                ]
            )
            report["scenarios"]["loo"]["teacher_has_largest_delta"] = mean(
                [float(max(it.extra["delta"], key=it.extra["delta"].get) == it.extra["teacher"]) for it in loo_items]
            )
            report["diagnostics"]["loo"] = z_diagnostics(loo_items)
            report["loo_detail"] = [
                {"question": it.question, "teacher": it.extra["teacher"], "bio_from": it.extra["bio_from"],
                 "loss_rise": {n: round(d, 3) for n, d in it.extra["delta"].items()},
                 "shares": {names.get(a, a): round(v, 3) for a, v in loo_shares[item_id(it)]}}
                for it in loo_items
            ]  # fmt: skip
            report["loo_adapters_seconds"] = round(sum(a.seconds for a in adapters.values() if a is not main_ad), 1)
            shares |= loo_shares
            report["goals"] = goals(report["scenarios"])
            save(report)
            log(f"loo: {json.dumps(report['scenarios']['loo']['combined'])}")

        # --- `fast` mode (the default): its combined shares over the same answers, every scenario
        all_items = [*main_items, *loo_items]
        t = time.monotonic()
        answered = [it for it in all_items if it.answer is not None]
        states, report["fast_mode_engine"] = engine_states(world.settings, model_dir, attributor.tokenizer, answered)
        fast = {
            item_id(it): shares_of(attributor.attribute(replace(it.answer, **states[item_id(it)]), "fast").record)
            for it in answered
        }
        report["fast_mode"] = headline(scenario_summary(all_items, adapters, fast, world, plan.loo_names, rows=False))
        fast = {item_id(it): shares_of(attributor.attribute(it.answer, "fast").record) for it in answered}
        report["fast_mode_whole_forward"] = headline(
            scenario_summary(all_items, adapters, fast, world, plan.loo_names, rows=False)
        )
        report["timings_s"]["fast_mode"] = round(time.monotonic() - t, 1)
        save(report)
        log(f"fast mode: {json.dumps(report['fast_mode'])}")
        log(f"fast mode, whole forward: {json.dumps(report['fast_mode_whole_forward'])}")

        # --- the same cached signals under other settings
        if not args.no_variants:
            t = time.monotonic()
            variants: dict[str, Any] = {"default": headline(report["scenarios"])}
            default_cfg = attributor.cfg
            for name, override in VARIANTS.items():
                attributor.cfg = default_cfg.model_copy(update=override)
                vs = attribute_all(attributor, [it for it in all_items if it.answer is not None])
                variants[name] = headline(scenario_summary(all_items, adapters, vs, world, plan.loo_names, rows=False))
            attributor.cfg = default_cfg
            report["variants"] = variants
            report["timings_s"]["variants"] = round(time.monotonic() - t, 1)

        report["timings_s"]["query_signals"] = round(cached.seconds, 1)
        report["timings_s"]["total"] = round(time.monotonic() - T0, 1)
        report["complete"] = True
        save(report)
        print(json.dumps(report, indent=1))
        g = report["goals"]

        best = g.get("skills_best_gradient_method", {})

        def fmt(key: str) -> str:
            v = g[key]["value"]
            return f"{v:.2f}" if isinstance(v, float) else str(v)

        print(
            f"attribution.quality: facts top-1 {fmt('facts_top1')} (goal >= 0.95), skills top-1 {fmt('skills_top1')} "
            f"(>= 0.95), leave-one-out Spearman {fmt('loo_mean_spearman')} (>= 0.65), conflicts credited "
            f"{fmt('conflicts_credited')} (>= 0.9), copier/original {fmt('copier_over_original')} (<= 0.10), "
            f"look-alike credited {fmt('lookalike_credited_rate')} (<= 0.05), best gradient-based method alone on "
            f"skills {best.get('method')} {best.get('value')} (>= 0.8); `fast` mode: facts "
            f"{report['fast_mode'].get('facts_top1')}, skills {report['fast_mode'].get('skills_top1')}, Spearman "
            f"{report['fast_mode'].get('loo_mean_spearman')}; "
            f"{report['main_adapter']['rows']} rows, {report['main_adapter']['contributors']} contributors, "
            f"{report['timings_s']['total']:.0f} s"
        )
        world.store.dispose()


if __name__ == "__main__":
    main()
