"""Contributions: parse and validate an upload, refuse exact duplicates, flag near-duplicates, check the signature,
and record rows, contribution and ledger event in the caller's transaction. Any error leaves nothing written."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from tally.config import DatanetSettings
from tally.datanets.dedup import DedupSettings, MinHasher, NearDupIndex
from tally.datanets.errors import DatanetError, ForbiddenError
from tally.datanets.events import ContributionSubmitted, ledger_name
from tally.datanets.formats import ParsedUpload, UploadError, UploadLimits, parse_upload
from tally.datanets.service import Datanet, _load, can_read, is_manager, is_member
from tally.datanets.tables import ContributionRow, DatanetRow, DataRow
from tally.identity import Principal, SignatureError, consume_nonce, recover_contribution_signer
from tally.ledger import Ledger, merkle
from tally.ledger.canonical import canonical_json
from tally.ledger.events import now_ts

_IN_CHUNK = 500  # bound on bound parameters per IN query
MAX_FILENAME = 256  # the filename column's width (PostgreSQL enforces it)


@dataclass(frozen=True)
class Contribution:
    id: str
    datanet: str
    contributor: str
    filename: str
    format: str
    content_root: str
    license: str
    row_count: int
    signed: bool
    status: str
    near_duplicates: list[dict[str, object]]
    ledger_seq: int


def content_root(row_hashes: list[str]) -> str:
    """Merkle root (RFC 9162) over the rows' hashes in upload order: what a contributor signs."""
    return merkle.root_of([merkle.leaf_hash(bytes.fromhex(h)) for h in row_hashes]).hex()


def upload_limits(dn: DatanetRow | Datanet, settings: DatanetSettings) -> UploadLimits:
    return UploadLimits(
        max_bytes=dn.max_upload_bytes, max_rows=settings.max_rows_per_upload, max_field_chars=settings.max_field_chars,
        chunk_chars=settings.chunk_chars, chunk_overlap=settings.chunk_overlap,
    )  # fmt: skip


def parse_for(dn_kind: str, data: bytes, filename: str, fmt: str | None, limits: UploadLimits) -> ParsedUpload:
    try:
        return parse_upload(data, filename, kind=dn_kind, format=fmt, limits=limits)  # type: ignore[arg-type]
    except UploadError as exc:  # keeps the upload's kind (a limit stays a limit) and where it failed
        raise DatanetError(str(exc), kind=exc.kind, param=exc.param, **exc.values) from exc


class NearDups:
    """One MinHash LSH index per datanet, and one signer per settings, kept across uploads by their owner (the
    runtime, for a server); a fresh one costs only speed: its indexes are built from the stored signatures.

    Rows enter a datanet only through contributions, so the sum of their row counts tells, cheaply, whether the
    database holds rows the index has not seen (another process wrote) or the index holds rows the database
    lost (a transaction rolled back); either way the index is rebuilt from the stored signatures.
    """

    def __init__(self) -> None:
        self._indexes: dict[tuple[str, str], tuple[NearDupIndex, int]] = {}
        self._hashers: dict[DedupSettings, MinHasher] = {}
        self._lock = threading.Lock()
        self._datanet_locks: dict[tuple[str, str], threading.Lock] = {}

    @contextmanager
    def lease(
        self, session: Session, slug: str, settings: DedupSettings, *, enabled: bool
    ) -> Iterator[NearDupIndex | None]:
        """The datanet's index for one upload, held by it alone (uploads run on worker threads); an upload that fails
        after adding rows to the index drops it, so it is rebuilt from the stored signatures."""
        if not enabled:
            yield None
            return
        key = (str(session.get_bind().engine.url), slug)
        with self._lock:
            lock = self._datanet_locks.setdefault(key, threading.Lock())
        with lock:
            try:
                yield self.get(session, slug, settings)
            except BaseException:
                self._indexes.pop(key, None)
                raise

    def hasher(self, settings: DedupSettings) -> MinHasher:
        hasher = self._hashers.get(settings)
        if hasher is None:
            hasher = self._hashers[settings] = MinHasher(settings)
        return hasher

    @staticmethod
    def _rows_in(session: Session, slug: str) -> int:
        total = session.execute(select(func.sum(ContributionRow.row_count)).where(ContributionRow.datanet == slug))
        return total.scalar() or 0

    def get(self, session: Session, slug: str, settings: DedupSettings) -> NearDupIndex:
        key = (str(session.get_bind().engine.url), slug)
        rows_now = self._rows_in(session, slug)
        cached = self._indexes.get(key)
        if cached is not None and cached[1] == rows_now and cached[0].settings == settings:
            return cached[0]
        index = NearDupIndex(settings)
        signed = (DataRow.datanet == slug) & (func.length(DataRow.minhash) > 0)
        for row_hash, sig in session.execute(select(DataRow.row_hash, DataRow.minhash).where(signed)):
            index.add(row_hash, bytes(sig))
        self._indexes[key] = (index, rows_now)
        return index

    def added(self, session: Session, slug: str, count: int) -> None:
        key = (str(session.get_bind().engine.url), slug)
        if key in self._indexes:
            index, rows = self._indexes[key]
            self._indexes[key] = (index, rows + count)


def contribute(
    session: Session,
    ledger: Ledger,
    principal: Principal,
    slug: str,
    data: bytes,
    filename: str,
    *,
    settings: DatanetSettings,
    chain_id: int,
    format: str | None = None,
    signature: str | None = None,
    nonce: int | None = None,
    near_dups: NearDups | None = None,
) -> Contribution:
    """Record an upload. `near_dups`: the caller's near-duplicate indexes, kept across uploads (None: built from the
    stored signatures for this call, which is correct but slower)."""
    dn = _load(session, slug)
    if not principal.has("contributor", "owner"):
        raise ForbiddenError("contributing needs the contributor role")
    manager = is_manager(principal, dn)
    if dn.policy == "invite-only" and not (manager or is_member(session, principal, slug)):
        raise ForbiddenError(f"datanet {slug!r} is invite-only; ask its owner to invite {principal.address}")
    if dn.visibility == "private" and not can_read(session, principal, dn):
        raise ForbiddenError(f"datanet {slug!r} is private; you need its owner's invitation or a grant")

    if len(filename) > MAX_FILENAME:
        raise DatanetError(f"the file name is {len(filename)} characters; at most {MAX_FILENAME}", param="file")
    parsed = parse_for(dn.kind, data, filename, format, upload_limits(dn, settings))
    rows = parsed.rows
    _refuse_existing(session, slug, filename, rows)
    _check_daily_limit(session, slug, principal.address, len(rows), dn.max_rows_per_day)

    root = content_root([r.row_hash for r in rows])
    if signature is not None or nonce is not None:
        if signature is None or nonce is None:
            missing = "signature" if signature is None else "nonce"
            raise DatanetError("a signed contribution needs both signature and nonce", param=missing)
        try:
            signer = recover_contribution_signer(
                signature, datanet=slug, content_root=root, license=dn.license, nonce=nonce, chain_id=chain_id
            )
            if signer != principal.address:
                raise SignatureError(
                    f"signature was made by {signer}, not by the contributor {principal.address} "
                    "(or over different content, license, datanet, nonce or chain)"
                )
            consume_nonce(session, principal.address, nonce)
        except SignatureError as exc:  # a replayed nonce stays a conflict
            raise DatanetError(str(exc), kind=exc.kind, param=exc.param or "signature", **exc.values) from exc

    dedup = DedupSettings(threshold=settings.near_dup_threshold)
    near_dups = NearDups() if near_dups is None else near_dups
    with near_dups.lease(session, slug, dedup, enabled=settings.near_dup_check) as index:
        hasher = near_dups.hasher(dedup) if index is not None else None
        status = "accepted" if dn.policy == "open" or manager else "pending"
        now = now_ts()
        contribution_id = _contribution_id(slug, principal.address, root, nonce)
        records: list[dict[str, object]] = []
        near: list[dict[str, object]] = []
        for position, row in enumerate(rows):
            sig, dup_of, score = b"", None, None
            if index is not None and hasher is not None:
                sig = hasher.signature(row.text)
                similar = index.query(sig)
                dup_of, score = similar[0] if similar else (None, None)
                if dup_of is not None and score is not None:
                    near.append(
                        {"row": row.row_hash, "line": row.line, "resembles": dup_of, "similarity": round(score, 3)}
                    )
                index.add(row.row_hash, sig)
            records.append(
                {
                    "datanet": slug, "row_hash": row.row_hash, "contribution": contribution_id, "position": position,
                    "line": row.line, "content": canonical_json(row.content).decode(), "minhash": sig,
                    "near_dup_of": dup_of, "near_dup_score": score, "status": status,
                    "reviewed_by": principal.address if status == "accepted" else None,
                    "reviewed_at": now if status == "accepted" else None, "created_at": now,
                }
            )  # fmt: skip
        event = ContributionSubmitted(
            datanet=ledger_name(ledger, slug, dn.visibility), contribution=contribution_id,
            contributor=principal.address, content_root=root, rows=len(rows), license=dn.license,
            signed=signature is not None, near_duplicates=len(near), status=status,
        )  # fmt: skip
        appended = ledger.append(session, event, actor=principal.address)
        session.add(
            ContributionRow(
                id=contribution_id, datanet=slug, contributor=principal.address, filename=filename,
                format=parsed.format, content_root=root, license=dn.license, row_count=len(rows), signature=signature,
                nonce=None if nonce is None else str(nonce), created_at=now, ledger_seq=appended.seq,
            )
        )  # fmt: skip
        session.flush()
        session.execute(insert(DataRow), records)
        if index is not None:
            near_dups.added(session, slug, len(rows))
    return Contribution(
        contribution_id, slug, principal.address, filename, parsed.format, root, dn.license, len(rows),
        signature is not None, status, near, appended.seq,
    )  # fmt: skip


def _contribution_id(slug: str, contributor: str, root: str, nonce: int | None) -> str:
    body = {
        "content_root": root,
        "contributor": contributor,
        "datanet": slug,
        "nonce": None if nonce is None else str(nonce),
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _refuse_existing(session: Session, slug: str, filename: str, rows: list) -> None:
    """Exact duplicates of rows already in the datanet refuse the whole upload, naming the first one."""
    by_hash = {r.row_hash: r for r in rows}
    hashes = list(by_hash)
    for i in range(0, len(hashes), _IN_CHUNK):
        found = session.execute(
            select(DataRow.row_hash, DataRow.contribution).where(
                DataRow.datanet == slug, DataRow.row_hash.in_(hashes[i : i + _IN_CHUNK])
            )
        ).first()
        if found is not None:
            row = by_hash[found[0]]
            where = f"line {row.line}" if row.line else f"chunk {row.content.get('chunk')}"
            raise DatanetError(
                f"{filename} {where}: this row is already in datanet {slug!r} "
                f"(contribution {found[1][:12]}); exact duplicates are refused",
                kind="conflict",
                contribution=found[1],
            )


def _check_daily_limit(session: Session, slug: str, address: str, adding: int, limit: int) -> None:
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    done = (
        session.execute(
            select(func.sum(ContributionRow.row_count)).where(
                ContributionRow.datanet == slug,
                ContributionRow.contributor == address,
                ContributionRow.created_at >= today,
            )
        ).scalar()
        or 0
    )
    if done + adding > limit:
        raise DatanetError(
            f"this upload of {adding} rows would bring you to {done + adding} rows today in {slug!r}; "
            f"the datanet allows {limit} rows per contributor per day (max_rows_per_day)",
            kind="limit",
            limit=limit,
            window="day",  # a quota over time: HTTP 429, not 413
            used=done,
            adding=adding,
        )


def row_content(row: DataRow) -> dict:
    return json.loads(row.content)
