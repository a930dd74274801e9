"""What the database says about evidence rows: originality order, which rows are still accepted, credits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from tally.attribution.record import Credits
from tally.attribution.shares import Source
from tally.datanets.tables import ContributionRow, DataRow


def contribution_seqs(session: Session, contributions: set[str]) -> dict[str, int]:
    """Ledger sequence number of each contribution: the earlier one is the original."""
    if not contributions:
        return {}
    rows = session.execute(
        select(ContributionRow.id, ContributionRow.ledger_seq).where(ContributionRow.id.in_(contributions))
    )
    return {cid: seq for cid, seq in rows}


def index_sources(session: Session, examples: list[dict[str, Any]]) -> list[Source]:
    seqs = contribution_seqs(session, {e["contribution"] for e in examples})
    return [
        Source(e["row_hash"], e["datanet"], e["contribution"], e["contributor"], seqs.get(e["contribution"], 1 << 62))
        for e in examples
    ]


def withdrawn_rows(session: Session, datanets: set[str]) -> set[tuple[str, str]]:
    """(datanet, row hash) of rows no longer accepted (rejected or removed after training): they earn nothing."""
    if not datanets:
        return set()
    rows = session.execute(
        select(DataRow.datanet, DataRow.row_hash).where(DataRow.datanet.in_(datanets), DataRow.status != "accepted")
    )
    return {(d, h) for d, h in rows}


def adapter_credits(session: Session, adapter_dir: Path | None, adapter_hash: str | None, base_model: str) -> Credits:
    """The adapter's developer and base model from its manifest; evaluators from evaluations recorded for it."""
    manifest: dict[str, Any] = {}
    if adapter_dir is not None and (adapter_dir / "manifest.json").is_file():
        manifest = json.loads((adapter_dir / "manifest.json").read_text())
    evaluators: list[str] = []
    if adapter_hash:
        try:  # evaluations are the factory's table; read by name so this package does not import the factory
            eval_datanets = [
                r[0] for r in session.execute(
                    text("SELECT DISTINCT datanet FROM factory_evals WHERE adapter_id = :h"), {"h": adapter_hash}
                )
            ]  # fmt: skip
        except OperationalError:
            eval_datanets = []
        if eval_datanets:
            q = (
                select(ContributionRow.contributor)
                .where(ContributionRow.datanet.in_(eval_datanets))
                .distinct()
                .order_by(ContributionRow.contributor)
                .limit(50)
            )
            evaluators = list(session.scalars(q))
    base = manifest.get("base_model", {})
    return Credits(
        developer=manifest.get("trained_by"),
        base_model=base.get("name", base_model),
        base_model_hash=base.get("hash"),
        evaluators=evaluators,
        pipeline_author=manifest.get("pipeline", {}).get("author"),
    )
