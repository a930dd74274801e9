"""Snapshots: immutable versions of a datanet's accepted rows, identified by their Merkle root.

The root is RFC 9162's over the accepted rows' hashes sorted ascending, so it depends only on which rows are in,
never on upload order or re-imports. Creating a snapshot of an unchanged datanet returns the existing one.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, NotFoundError
from tally.datanets.events import SnapshotCreated, ledger_name
from tally.datanets.service import Datanet, check_export, get_datanet, manage
from tally.datanets.tables import ContributionRow, DataRow, SnapshotMember, SnapshotRow
from tally.identity import Principal
from tally.ledger import Ledger, merkle
from tally.ledger.events import now_ts


@dataclass(frozen=True)
class Snapshot:
    id: str
    datanet: str
    version: int
    row_count: int
    contributors: dict[str, int]
    license: str
    created_by: str
    created_at: str
    ledger_seq: int

    @classmethod
    def of(cls, r: SnapshotRow) -> Snapshot:
        return cls(
            r.id, r.datanet, r.version, r.row_count, dict(r.contributors), r.license, r.created_by, r.created_at,
            r.ledger_seq,
        )  # fmt: skip


def snapshot_root(row_hashes: list[str]) -> str:
    return merkle.root_of([merkle.leaf_hash(bytes.fromhex(h)) for h in sorted(row_hashes)]).hex()


def create_snapshot(session: Session, ledger: Ledger, principal: Principal, slug: str) -> Snapshot:
    dn = manage(session, principal, slug, "create snapshots")
    accepted = session.execute(
        select(DataRow.row_hash, ContributionRow.contributor)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(DataRow.datanet == slug, DataRow.status == "accepted")
    ).all()
    root = snapshot_root([h for h, _ in accepted])
    existing = session.get(SnapshotRow, (root, slug))
    if existing is not None:
        return Snapshot.of(existing)
    version = (
        session.execute(select(func.max(SnapshotRow.version)).where(SnapshotRow.datanet == slug)).scalar() or 0
    ) + 1
    contributors = dict(sorted(Counter(c for _, c in accepted).items()))
    event = SnapshotCreated(
        datanet=ledger_name(ledger, slug, dn.visibility),
        snapshot=root,
        version=version,
        rows=len(accepted),
        contributors=contributors,
    )
    appended = ledger.append(session, event, actor=principal.address)
    row = SnapshotRow(
        id=root, datanet=slug, version=version, row_count=len(accepted), contributors=contributors,
        license=dn.license, created_by=principal.address, created_at=now_ts(), ledger_seq=appended.seq,
    )  # fmt: skip
    session.add(row)
    session.flush()
    if accepted:
        session.execute(
            insert(SnapshotMember), [{"datanet": slug, "snapshot": root, "row_hash": h} for h, _ in accepted]
        )
    return Snapshot.of(row)


def get_snapshot(session: Session, principal: Principal, slug: str, snapshot: str = "latest") -> Snapshot:
    """A snapshot by id (a unique prefix will do), version number (`v3`) or `latest`."""
    get_datanet(session, principal, slug)
    query = select(SnapshotRow).where(SnapshotRow.datanet == slug)
    if snapshot == "latest":
        query = query.where(
            SnapshotRow.version
            == select(func.max(SnapshotRow.version)).where(SnapshotRow.datanet == slug).scalar_subquery()
        )
    elif snapshot.startswith("v") and snapshot[1:].isdigit():
        query = query.where(SnapshotRow.version == int(snapshot[1:]))
    else:
        query = query.where(SnapshotRow.id.startswith(snapshot.lower()))
    found = session.execute(query.limit(2)).scalars().all()
    if len(found) != 1:
        # none is not found; more than one is an ambiguous prefix: invalid
        what, error = ("no", NotFoundError) if not found else ("more than one", DatanetError)
        raise error(f"{what} snapshot {snapshot!r} of datanet {slug!r}")
    return Snapshot.of(found[0])


def list_snapshots(session: Session, principal: Principal, slug: str) -> list[Snapshot]:
    get_datanet(session, principal, slug)
    rows = session.execute(select(SnapshotRow).where(SnapshotRow.datanet == slug).order_by(SnapshotRow.version))
    return [Snapshot.of(r) for r in rows.scalars()]


def snapshot_row_hashes(session: Session, snap: Snapshot) -> list[str]:
    return list(
        session.execute(
            select(SnapshotMember.row_hash)
            .where(SnapshotMember.datanet == snap.datanet, SnapshotMember.snapshot == snap.id)
            .order_by(SnapshotMember.row_hash)
        ).scalars()
    )


def diff_snapshots(session: Session, principal: Principal, slug: str, old: str, new: str) -> dict[str, object]:
    a, b = get_snapshot(session, principal, slug, old), get_snapshot(session, principal, slug, new)
    ha, hb = set(snapshot_row_hashes(session, a)), set(snapshot_row_hashes(session, b))
    return {"from": a.id, "to": b.id, "added": sorted(hb - ha), "removed": sorted(ha - hb), "unchanged": len(ha & hb)}


DIFF_SIDES = ("added", "removed")


def diff_page(
    session: Session,
    principal: Principal,
    slug: str,
    old: str,
    new: str,
    *,
    side: str = "added",
    after: str | None = None,
    limit: int = 50,
) -> dict[str, Any]:
    """One page of a diff between two snapshots, computed in the database: the rows `added` in `new` (or `removed`
    from `old`) by row hash after `after`, with their content where the row is still stored, and the counts."""
    if side not in DIFF_SIDES:
        raise DatanetError(f"side {side!r} is not one of {', '.join(DIFF_SIDES)}", param="side")
    a, b = get_snapshot(session, principal, slug, old), get_snapshot(session, principal, slug, new)
    there, gone = (b, a) if side == "added" else (a, b)
    mine, theirs = SnapshotMember.__table__.alias("mine"), SnapshotMember.__table__.alias("theirs")
    # rows in both, by primary-key lookups: added = |b| - both, removed = |a| - both
    both = session.execute(
        select(func.count())
        .select_from(mine)
        .join(
            theirs,
            (theirs.c.datanet == mine.c.datanet) & (theirs.c.snapshot == a.id) & (theirs.c.row_hash == mine.c.row_hash),
        )
        .where(mine.c.datanet == slug, mine.c.snapshot == b.id)
    ).scalar_one()
    counts = {"added": b.row_count - both, "removed": a.row_count - both}
    elsewhere = (
        select(theirs.c.row_hash)
        .where(theirs.c.datanet == slug, theirs.c.snapshot == gone.id, theirs.c.row_hash == mine.c.row_hash)
        .exists()
    )
    query = select(mine.c.row_hash).where(mine.c.datanet == slug, mine.c.snapshot == there.id, ~elsewhere)
    if after is not None:
        query = query.where(mine.c.row_hash > after)
    hashes = list(session.execute(query.order_by(mine.c.row_hash).limit(limit)).scalars())
    found = session.execute(
        select(DataRow.row_hash, DataRow.content).where(DataRow.datanet == slug, DataRow.row_hash.in_(hashes))
    )
    stored = {row_hash: content for row_hash, content in found}
    rows = [{"row_hash": h, "content": json.loads(stored[h]) if h in stored else None} for h in hashes]
    unchanged = both
    return {"from": a, "to": b, "side": side, "rows": rows, "unchanged": unchanged, **counts}


class SnapshotEntry(NamedTuple):
    """One row of a snapshot and where it came from."""

    row_hash: str
    contribution: str
    contributor: str
    content: dict[str, Any]


def snapshot_rows(session: Session, snap: Snapshot) -> list[SnapshotEntry]:
    """The rows of a snapshot that are still accepted, with their contribution and contributor, in canonical (row
    hash) order. A row rejected or withdrawn after the snapshot was taken is never exported, trained on or
    retrieved again, so the rows may be fewer than the snapshot's root covers."""
    rows = session.execute(
        select(DataRow.row_hash, DataRow.contribution, ContributionRow.contributor, DataRow.content)
        .join(
            SnapshotMember, (SnapshotMember.row_hash == DataRow.row_hash) & (SnapshotMember.datanet == DataRow.datanet)
        )
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(SnapshotMember.snapshot == snap.id, SnapshotMember.datanet == snap.datanet)
        .where(DataRow.status == "accepted")
        .order_by(DataRow.row_hash)
    )
    return [SnapshotEntry(h, c, who, json.loads(content)) for h, c, who, content in rows]


def export_rows(
    session: Session, principal: Principal, slug: str, snapshot: str
) -> tuple[Datanet, Snapshot, list[dict[str, Any]]]:
    """(datanet, snapshot, rows) of an export the caller may take (see `check_export`)."""
    dn = check_export(session, principal, slug)
    snap = get_snapshot(session, principal, slug, snapshot)
    return dn, snap, [entry.content for entry in snapshot_rows(session, snap)]


def export_snapshot(session: Session, principal: Principal, slug: str, snapshot: str, out_dir: Path) -> Path:
    """Write `data.jsonl` and a dataset card `README.md` that Hugging Face `datasets` loads as they are."""
    dn, snap, rows = export_rows(session, principal, slug, snapshot)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "data.jsonl", "w", encoding="utf-8") as f:
        for content in rows:
            f.write(json.dumps(content, ensure_ascii=False) + "\n")
    (out_dir / "README.md").write_text(dataset_card(dn, snap), encoding="utf-8")
    return out_dir


def _hf_license(spdx: str) -> str:
    """Hub license ids are lower-case SPDX ids; compound expressions are `other`."""
    return spdx.lower() if " " not in spdx else "other"


def dataset_card(dn: Datanet, snap: Snapshot) -> str:
    rows = "\n".join(f"| `{addr}` | {n} |" for addr, n in sorted(snap.contributors.items(), key=lambda kv: -kv[1]))
    tags = "".join(f"\n- {t}" for t in dn.tags) or " []"
    return f"""---
license: {_hf_license(dn.license)}
tags:{tags}
configs:
- config_name: default
  data_files: data.jsonl
---

# {dn.slug}

{dn.description}

- Snapshot: `{snap.id}` (version {snap.version}, {snap.row_count} row{"" if snap.row_count == 1 else "s"})
- License (SPDX): `{dn.license}`
- Permitted uses: {", ".join(dn.uses)}
- Data kind: {dn.kind}
- Recorded in the Tally ledger at entry {snap.ledger_seq}; the snapshot id is the RFC 9162 Merkle root over the
  sorted SHA-256 hashes of the rows' canonical JSON, so anyone can recompute it from `data.jsonl`.

## Contributors

| address | rows |
|---|---|
{rows}
"""
