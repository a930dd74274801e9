"""Which indexes exist for a datanet and who may use them for RAG.

Why permissions live next to the catalogue: every path that reads rows or indexes for retrieval goes through
`authorise`, which hides a private datanet the caller may not read (404, as everywhere else) and then asks
`check_use(..., "rag")`, which refuses licenses/uses without `rag` and private datanets without a rag grant.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.orm import Session

from tally.datanets.service import Datanet, check_use, get_datanet
from tally.datanets.tables import DataRow
from tally.identity import Principal
from tally.rag.chunks import CHUNKER_VERSION
from tally.rag.index import read_meta


def authorise(session: Session, principal: Principal, slug: str) -> Datanet:
    """The datanet if the caller may retrieve from it; NotFoundError or ForbiddenError otherwise."""
    get_datanet(session, principal, slug)  # a private datanet the caller cannot read stays undisclosed
    return check_use(session, principal, slug, "rag")


def accepted(session: Session, keys: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Which (datanet, row hash) pairs are accepted now: a row rejected after its snapshot is never served."""
    wanted = sorted(set(keys))
    found: set[tuple[str, str]] = set()
    for start in range(0, len(wanted), 500):
        part = wanted[start : start + 500]
        found.update(
            session.execute(
                select(DataRow.datanet, DataRow.row_hash).where(
                    tuple_(DataRow.datanet, DataRow.row_hash).in_(part), DataRow.status == "accepted"
                )
            ).tuples()
        )
    return found


def datanet_dir(index_dir: Path, slug: str) -> Path:
    return index_dir / slug


def indexes(index_dir: Path, slug: str, model: str) -> list[tuple[int, Path, dict[str, Any]]]:
    """(snapshot version, folder, meta) of the usable indexes of a datanet for this model, newest first."""
    base = datanet_dir(index_dir, slug)
    if not base.is_dir():
        return []
    found = []
    for folder in base.iterdir():
        if folder.name.startswith("."):
            continue
        meta = read_meta(folder)
        if meta and meta.get("model") == model and meta.get("chunker") == CHUNKER_VERSION:
            found.append((int(meta["version"]), folder, meta))
    return sorted(found, key=lambda t: -t[0])


def prune(index_dir: Path, slug: str, model: str, keep_old: int, keep: Path) -> list[str]:
    """Delete all but the newest index, `keep_old` older ones and `keep`; returns the removed snapshot ids."""
    removed = []
    for _, folder, meta in indexes(index_dir, slug, model)[1 + keep_old :]:
        if folder == keep:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(meta["snapshot"]))
    return removed
