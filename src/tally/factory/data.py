"""Which rows a training run may use, and their conversion to chat messages.

Every source is checked before any row is read: the caller must be able to read the datanet, its permitted uses
must include `train` (and `commercial` for commercial adapters), and its license must allow derivative models.
All refusals are collected, so one error names every datanet at fault and why.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.datanets.service import check_use, get_datanet
from tally.datanets.snapshots import Snapshot, get_snapshot, snapshot_rows
from tally.factory.config import SourceCfg
from tally.factory.errors import DataRefusedError, FactoryError
from tally.identity import Principal


@dataclass(frozen=True)
class Example:
    """One training row and where it came from (what attribution maps gradients back to)."""

    row_hash: str
    datanet: str
    snapshot: str
    contributor: str
    contribution: str
    messages: list[dict[str, str]]
    train_all_tokens: bool = False  # documents: plain text, every token is a target


@dataclass
class TrainingData:
    examples: list[Example]
    snapshots: list[Snapshot]
    licenses: dict[str, str] = field(default_factory=dict)  # datanet -> SPDX


def license_problem(spdx: str, commercial: bool) -> str | None:
    """Why an SPDX expression forbids training an adapter, or None. Any alternative of an OR may be chosen."""
    options = [o.strip().strip("()") for o in spdx.split(" OR ")]

    def ok(option: str) -> bool:
        ids = option.upper().replace("(", " ").replace(")", " ").split()
        if any("-ND" in i for i in ids):
            return False
        return not (commercial and any("-NC" in i for i in ids))

    if any(ok(o) for o in options):
        return None
    if any("-ND" in o.upper() for o in options):
        return f"license {spdx} forbids derivative works (a trained adapter is one)"
    return f"license {spdx} is non-commercial but data.commercial is true"


def to_messages(kind: str, content: dict) -> tuple[list[dict[str, str]], bool]:
    """A stored normal-form row as chat messages; documents become one assistant turn trained on in full."""
    if kind == "instruction":
        prompt = content["instruction"] + (f"\n\n{content['input']}" if content.get("input") else "")
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": content["output"]}], False
    if kind == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in content["messages"]], False
    if kind == "documents":
        return [{"role": "assistant", "content": content["text"]}], True
    raise FactoryError(f"cannot train on rows of kind {kind!r}")


def resolve_sources(
    session: Session, principal: Principal, sources: list[SourceCfg], use: str = "train", *, commercial: bool = False
) -> list[tuple[str, Snapshot]]:
    """(kind, snapshot) per source, or DataRefusedError naming every datanet that may not be used and why."""
    refused: dict[str, str] = {}
    found: list[tuple[str, Snapshot]] = []
    for src in sources:
        try:
            dn = get_datanet(session, principal, src.datanet)
            for needed in [use, "commercial"] if commercial else [use]:
                check_use(session, principal, src.datanet, needed)
            problem = license_problem(dn.license, commercial) if use == "train" else None
            if problem:
                refused[src.datanet] = problem
                continue
            found.append((dn.kind, get_snapshot(session, principal, src.datanet, src.snapshot)))
        except (ForbiddenError, NotFoundError, DatanetError) as exc:
            refused[src.datanet] = str(exc)
    if refused:
        raise DataRefusedError(refused)
    return found


def load_examples(
    session: Session, principal: Principal, sources: list[SourceCfg], use: str = "train", *, commercial: bool = False
) -> TrainingData:
    """Every permitted row of the requested snapshots, in canonical (datanet, row hash) order."""
    data = TrainingData([], [])
    for kind, snap in resolve_sources(session, principal, sources, use, commercial=commercial):
        for row in snapshot_rows(session, snap):
            messages, all_tokens = to_messages(kind, row.content)
            data.examples.append(
                Example(row.row_hash, snap.datanet, snap.id, row.contributor, row.contribution, messages, all_tokens)
            )
        data.snapshots.append(snap)
        data.licenses[snap.datanet] = snap.license
    if not data.examples:
        names = ", ".join(f"{s.datanet}@{s.id[:12]}" for s in data.snapshots)
        raise FactoryError(f"no rows to use: the snapshots ({names}) are empty")
    return data


def split(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """A seeded, order-independent held-out split: rows sorted by SHA-256(seed, row hash)."""
    if eval_fraction <= 0:
        return examples, []
    ranked = sorted(examples, key=lambda e: hashlib.sha256(f"{seed}:{e.datanet}:{e.row_hash}".encode()).digest())
    n_eval = max(1, round(len(examples) * eval_fraction))
    held = {id(e) for e in ranked[:n_eval]}
    return [e for e in examples if id(e) not in held], [e for e in examples if id(e) in held]
