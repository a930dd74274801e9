"""RAG service functions: build an index per snapshot, report its state, retrieve with permissions and a record.

The API and the CLI call these; they hold no logic of their own. Why one index per snapshot: a snapshot is an
immutable, content-addressed set of accepted rows, so an index named by its root can never disagree with it, and
a newer snapshot simply means a newer index (built incrementally: only rows not embedded before are embedded).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, NotFoundError
from tally.datanets.service import ledger_label
from tally.datanets.snapshots import get_snapshot, snapshot_rows
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts
from tally.rag import catalog
from tally.rag.chunks import CHUNKER_VERSION, chunk_text
from tally.rag.embed import Embedder, load_embedder
from tally.rag.events import RetrievalPerformed, RetrievedRow, SearchedDatanet
from tally.rag.index import ChunkIndex, ChunkMeta, IndexCache, load_index, save_index
from tally.rag.search import rank
from tally.rag.settings import RagSettings

Mode = Literal["hybrid", "bm25", "dense"]
MODES = ("hybrid", "bm25", "dense")
Progress = Callable[[int, int], None]  # (rows embedded so far, rows to embed)
log = logging.getLogger(__name__)


class IndexMissingError(NotFoundError):
    """The datanet has a snapshot but no RAG index yet (build one, or retrieve with refresh=True); kind not_found."""


@dataclass(frozen=True)
class RetrievedChunk:
    rank: int
    score: float
    text: str
    datanet: str
    snapshot: str
    row_hash: str
    contribution: str
    contributor: str


@dataclass(frozen=True)
class BuildReport:
    datanet: str
    snapshot: str
    version: int
    rows: int
    embedded: int  # rows embedded by this build
    reused: int  # rows whose embedding came from an earlier index (keyed by row hash)
    built: bool  # False: an index of this snapshot already existed
    pruned: list[str]


@dataclass(frozen=True)
class IndexStatus:
    datanet: str
    latest_snapshot: str | None
    latest_version: int | None
    indexed_snapshot: str | None
    indexed_version: int | None
    rows: int
    stale: bool  # the datanet has a newer snapshot than its newest index (or no index)


def build_index(
    session: Session, principal: Principal, slug: str, snapshot: str = "latest", *, settings: RagSettings,
    embedder: Embedder | None = None, progress: Progress | None = None, indexes: IndexCache | None = None,
) -> BuildReport:  # fmt: skip
    """Index a snapshot, embedding only rows that no earlier index of this datanet (same model) holds.

    `embedder` and `indexes` are the caller's loaded model and indexes (None: loaded from disk for this call)."""
    catalog.authorise(session, principal, slug)
    snap = get_snapshot(session, principal, slug, snapshot)
    embedder = embedder or load_embedder(settings)
    folder = catalog.datanet_dir(settings.index_dir, slug) / snap.id
    known = catalog.indexes(settings.index_dir, slug, embedder.name)
    if any(f == folder for _, f, _ in known):
        return BuildReport(slug, snap.id, snap.version, snap.row_count, 0, 0, False, [])
    rows = snapshot_rows(session, snap)
    previous: dict[str, np.ndarray] = {}
    for _, old_folder, _ in known[:1]:
        old = indexes.load(old_folder) if indexes is not None else load_index(old_folder)
        if old is not None:
            previous = {c.row_hash: old.emb[i] for i, c in enumerate(old.chunks)}
    chunks = [ChunkMeta(h, contribution, who, chunk_text(content)) for h, contribution, who, content in rows]
    emb = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    todo = []
    for i, c in enumerate(chunks):
        if c.row_hash in previous:
            emb[i] = previous[c.row_hash]
        else:
            todo.append(i)
    step = max(1, settings.batch_size * 8)
    for start in range(0, len(todo), step):
        part = todo[start : start + step]
        emb[part] = embedder.embed(
            [chunks[i].text for i in part], batch_size=settings.batch_size, threads=settings.build_threads
        )
        if progress is not None:
            progress(start + len(part), len(todo))
    meta = {
        "datanet": slug, "snapshot": snap.id, "version": snap.version, "model": embedder.name,
        "chunker": CHUNKER_VERSION, "created_at": now_ts(), "embedded": len(todo),
        "reused": len(chunks) - len(todo),
    }  # fmt: skip
    save_index(folder, meta, chunks, emb)
    pruned = catalog.prune(settings.index_dir, slug, embedder.name, settings.keep_old_indexes, keep=folder)
    return BuildReport(slug, snap.id, snap.version, len(chunks), len(todo), len(chunks) - len(todo), True, pruned)


def index_status(
    session: Session, principal: Principal, slug: str, *, settings: RagSettings, model: str | None = None
) -> IndexStatus:
    """The newest index of a datanet and whether a newer snapshot has appeared since it was built."""
    catalog.authorise(session, principal, slug)
    try:
        latest = get_snapshot(session, principal, slug, "latest")
    except NotFoundError:
        latest = None
    known = catalog.indexes(settings.index_dir, slug, model or settings.model_name)
    meta = known[0][2] if known else None
    return IndexStatus(
        slug, latest.id if latest else None, latest.version if latest else None,
        meta["snapshot"] if meta else None, meta["version"] if meta else None, int(meta["rows"]) if meta else 0,
        stale=latest is not None and (meta is None or meta["snapshot"] != latest.id),
    )  # fmt: skip


def _open(
    session: Session, principal: Principal, slug: str, settings: RagSettings, embedder: Embedder | None,
    refresh: bool, indexes: IndexCache | None,
) -> tuple[ChunkIndex, str]:  # fmt: skip
    """The datanet's newest index (built or updated first when refresh) and its latest snapshot id."""
    catalog.authorise(session, principal, slug)
    latest = get_snapshot(session, principal, slug, "latest")
    model = embedder.name if embedder else settings.model_name
    known = catalog.indexes(settings.index_dir, slug, model)
    if refresh and (not known or known[0][2]["snapshot"] != latest.id):
        build_index(session, principal, slug, latest.id, settings=settings, embedder=embedder, indexes=indexes)
        known = catalog.indexes(settings.index_dir, slug, model)
    load = indexes.load if indexes is not None else load_index
    index = load(known[0][1]) if known else None
    if index is None:
        raise IndexMissingError(f"datanet {slug!r} has no RAG index; build one for snapshot {latest.id[:12]}")
    if index.snapshot != latest.id:
        log.warning("RAG index of %s is stale: built for %s, latest is %s", slug, index.snapshot[:12], latest.id[:12])
    return index, latest.id


def retrieve(
    session: Session, ledger: Ledger, principal: Principal, datanets: list[str], query: str, top_k: int = 5,
    mode: Mode = "hybrid", *, settings: RagSettings, embedder: Embedder | None = None, refresh: bool = False,
    indexes: IndexCache | None = None,
) -> list[RetrievedChunk]:  # fmt: skip
    """The top_k accepted chunks for `query` across datanets the caller may use for RAG; recorded in the ledger.

    `embedder` and `indexes` are the caller's loaded model and indexes, kept across queries by a server's runtime
    (None: loaded from disk for this call, which is correct but takes seconds)."""
    if mode not in MODES:
        raise DatanetError(f"mode {mode!r} is not one of {', '.join(MODES)}", param="mode")
    if not 1 <= top_k <= settings.max_top_k:
        raise DatanetError(f"top_k must be between 1 and {settings.max_top_k}, got {top_k}", param="top_k")
    if not query.strip():
        raise DatanetError("query is empty", param="query")
    if len(query) > settings.max_query_chars:
        raise DatanetError(
            f"query has {len(query)} characters; the limit is {settings.max_query_chars}",
            kind="limit",
            param="query",
            limit=settings.max_query_chars,
            size=len(query),
        )
    slugs = list(dict.fromkeys(datanets))
    if not slugs:
        raise DatanetError("name at least one datanet to search", param="datanets")
    if embedder is None and mode != "bm25":
        embedder = load_embedder(settings)
    opened = {slug: _open(session, principal, slug, settings, embedder, refresh, indexes) for slug in slugs}
    qvec = None if embedder is None or mode == "bm25" else embedder.embed([query], threads=settings.query_threads)[0]
    ranked = rank({slug: index for slug, (index, _) in opened.items()}, query, qvec, mode, settings)
    keys = [(slug, opened[slug][0].chunks[i].row_hash) for (slug, i), _ in ranked]
    ok = catalog.accepted(session, keys)
    out: list[RetrievedChunk] = []
    for ((slug, i), score), key in zip(ranked, keys, strict=True):
        if key in ok and len(out) < top_k:
            index, c = opened[slug][0], opened[slug][0].chunks[i]
            out.append(RetrievedChunk(len(out) + 1, score, c.text, slug, index.snapshot, c.row_hash, c.contribution,
                                      c.contributor))  # fmt: skip
    searched = {slug: (index.snapshot, latest) for slug, (index, latest) in opened.items()}
    record(session, ledger, principal, query, mode, top_k, searched, out)
    return out


def record(
    session: Session, ledger: Ledger, principal: Principal, query: str, mode: str, top_k: int,
    searched: dict[str, tuple[str, str]], chunks: list[RetrievedChunk],
) -> None:  # fmt: skip
    """Append `rag.retrieval` in the caller's transaction (private datanets named by their ledger commitment)."""
    label = {slug: ledger_label(session, ledger, slug) for slug in {*searched, *(c.datanet for c in chunks)}}
    event = RetrievalPerformed(
        query_hash=hashlib.sha256(query.encode("utf-8")).hexdigest(), mode=mode, top_k=top_k,
        datanets=[SearchedDatanet(datanet=label[s], snapshot=snap, latest=lt) for s, (snap, lt) in searched.items()],
        chunks=[
            RetrievedRow(rank=c.rank, datanet=label[c.datanet], snapshot=c.snapshot, row_hash=c.row_hash,
                         contribution=c.contribution, contributor=c.contributor, score=round(c.score, 6))
            for c in chunks
        ],
    )  # fmt: skip
    ledger.append(session, event, actor=principal.address)
