"""What the database says about evidence rows: originality order, which rows are still accepted, credits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.attribution.record import Credits
from tally.attribution.shares import Source
from tally.datanets.tables import ContributionRow, DataRow
from tally.engine.manifest import read_adapter_manifest, read_evaluations


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
    """The adapter's developer, base model and pipeline author from its manifest; evaluators are the contributors of
    the datanets its exact weights were evaluated on, which the factory lists beside the manifest (evaluations.json)
    so that this package reads a file of the adapter rather than the factory's tables."""
    manifest = read_adapter_manifest(adapter_dir) if adapter_dir is not None else None
    evaluations = read_evaluations(adapter_dir, adapter_hash) if adapter_dir is not None and adapter_hash else []
    evaluators: list[str] = []
    if evaluations:
        q = (
            select(ContributionRow.contributor)
            .where(ContributionRow.datanet.in_(sorted({e.datanet for e in evaluations})))
            .distinct()
            .order_by(ContributionRow.contributor)
            .limit(50)
        )
        evaluators = list(session.scalars(q))
    if manifest is None:
        return Credits(base_model=base_model, evaluators=evaluators)
    return Credits(
        developer=manifest.trained_by,
        base_model=manifest.base_model.name,
        base_model_hash=manifest.base_model.hash,
        evaluators=evaluators,
        pipeline_author=manifest.pipeline.author if manifest.pipeline else None,
    )
