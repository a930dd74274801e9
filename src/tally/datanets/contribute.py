"""Contributions: parse and validate an upload, refuse exact duplicates, flag near-duplicates, check the signature,
and record rows, contribution and ledger event in the caller's transaction. Any error leaves nothing written."""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import Table, delete, event, func, insert, or_, select
from sqlalchemy.orm import Session

from tally.config import DatanetSettings
from tally.datanets.dedup import BandLayout, DedupSettings, MinHasher, signature_similarity
from tally.datanets.errors import DatanetError, ForbiddenError
from tally.datanets.events import ContributionSubmitted, ledger_name
from tally.datanets.formats import (
    MAX_PROBLEMS,
    DroppedRow,
    ParsedUpload,
    Row,
    UploadError,
    UploadLimits,
    parse_upload,
)
from tally.datanets.service import Datanet, _load, can_read, is_manager, is_member
from tally.datanets.tables import ContributionRow, DatanetRow, DataRow, RowBand
from tally.identity import (
    Principal,
    SignatureError,
    consume_nonce,
    contribution_typed_data,
    recover_contribution_signer,
    sign_contribution,
)
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
    dropped: list[dict[str, object]] = field(default_factory=list)  # repeated rows left out (drop_duplicates)


def content_root(row_hashes: list[str]) -> str:
    """Merkle root (RFC 9162) over the rows' hashes in upload order: what a contributor signs."""
    return merkle.root_of([merkle.leaf_hash(bytes.fromhex(h)) for h in row_hashes]).hex()


def upload_limits(dn: DatanetRow | Datanet, settings: DatanetSettings) -> UploadLimits:
    return UploadLimits(
        max_bytes=dn.max_upload_bytes, max_rows=settings.max_rows_per_upload, max_field_chars=settings.max_field_chars,
        chunk_chars=settings.chunk_chars, chunk_overlap=settings.chunk_overlap,
    )  # fmt: skip


def parse_for(
    dn_kind: str, data: bytes, filename: str, fmt: str | None, limits: UploadLimits, *, drop_duplicates: bool = False
) -> ParsedUpload:
    try:
        return parse_upload(
            data, filename, kind=dn_kind, format=fmt, limits=limits, drop_duplicates=drop_duplicates,  # type: ignore[arg-type]
        )  # fmt: skip
    except UploadError as exc:  # keeps the upload's kind (a limit stays a limit) and where it failed
        raise DatanetError(str(exc), kind=exc.kind, param=exc.param, **exc.values) from exc


_BANDS = cast(Table, RowBand.__table__)  # Core inserts: the ORM's bulk path costs a third more per key


def _row_ref(row_hash: str) -> int:
    """The first 8 bytes of a row hash as a signed 64-bit integer (what `datanet_row_bands` stores)."""
    return int.from_bytes(bytes.fromhex(row_hash[:16]), "big", signed=True)


def _ref_prefix(ref: int) -> str:
    return ref.to_bytes(8, "big", signed=True).hex()


class NearDups:
    """Finds a new row's near-duplicates among its datanet's stored rows through the LSH band keys stored beside them
    (`datanet_row_bands`), so nothing per row lives in memory: a server's footprint stays flat as datanets grow, and
    every process sees every other's rows. What it keeps across uploads (its owner is the runtime, for a server) is
    bounded: one signer and band layout per settings, and which datanets it has found fully keyed.

    Uploads hold the database's write lock for their whole transaction, so two never key rows at the same time.
    """

    def __init__(self) -> None:
        self._hashers: dict[DedupSettings, MinHasher] = {}
        self._layouts: dict[DedupSettings, BandLayout] = {}
        self._keyed: set[tuple[str, str, str]] = set()  # (database, datanet, layout) known to have every row keyed

    def hasher(self, settings: DedupSettings) -> MinHasher:
        hasher = self._hashers.get(settings)
        if hasher is None:
            hasher = self._hashers[settings] = MinHasher(settings)
        return hasher

    def layout(self, settings: DedupSettings) -> BandLayout:
        layout = self._layouts.get(settings)
        if layout is None:
            layout = self._layouts[settings] = BandLayout.for_settings(settings)
        return layout

    def find(
        self, session: Session, slug: str, settings: DedupSettings, rows: list[tuple[str, bytes]]
    ) -> list[tuple[str, float] | None]:
        """For each (row hash, signature) in upload order, the most similar row at or above the threshold among
        the datanet's stored rows and the upload's earlier rows (ties by row hash), or None; then keys the rows."""
        layout = self.layout(settings)
        self._key_missing(session, slug, layout)
        keys = [layout.keys(sig) for _, sig in rows]
        stored = self._stored_candidates(session, slug, layout, {k for ks in keys for k in ks})
        earlier: dict[int, list[int]] = {}  # band key -> positions in this upload
        found: list[tuple[str, float] | None] = []
        for position, ((_, sig), row_keys) in enumerate(zip(rows, keys, strict=True)):
            candidates = {h: s for k in row_keys for h, s in stored.get(k, ())}
            candidates.update((rows[p][0], rows[p][1]) for k in row_keys for p in earlier.get(k, ()))
            scored = [(h, signature_similarity(sig, other)) for h, other in candidates.items()]
            scored = [pair for pair in scored if pair[1] >= settings.threshold]
            found.append(min(scored, key=lambda pair: (-pair[1], pair[0])) if scored else None)
            for k in row_keys:
                earlier.setdefault(k, []).append(position)
        self._insert_keys(session, slug, layout, [(h, ks) for (h, _), ks in zip(rows, keys, strict=True)])
        return found

    @staticmethod
    def _stored_candidates(
        session: Session, slug: str, layout: BandLayout, keys: set[int]
    ) -> dict[int, list[tuple[str, bytes]]]:
        refs_by_key: dict[int, list[int]] = {}
        ordered = sorted(keys)
        for i in range(0, len(ordered), _IN_CHUNK):
            query = select(RowBand.key, RowBand.row_ref).where(
                RowBand.datanet == slug, RowBand.layout == layout.name, RowBand.key.in_(ordered[i : i + _IN_CHUNK])
            )
            for key, ref in session.execute(query):
                refs_by_key.setdefault(key, []).append(ref)
        refs = sorted({ref for found in refs_by_key.values() for ref in found})
        rows_by_ref: dict[int, list[tuple[str, bytes]]] = {}
        for i in range(0, len(refs), 100):  # a ref names the rows whose hash starts with its 16 hex digits
            prefixes = [_ref_prefix(ref) for ref in refs[i : i + 100]]
            rows = select(DataRow.row_hash, DataRow.minhash).where(
                DataRow.datanet == slug, or_(*(DataRow.row_hash.between(p, p + "g") for p in prefixes))
            )
            for row_hash, sig in session.execute(rows):
                if sig:
                    rows_by_ref.setdefault(_row_ref(row_hash), []).append((row_hash, bytes(sig)))
        return {key: [row for ref in found for row in rows_by_ref.get(ref, ())] for key, found in refs_by_key.items()}

    @staticmethod
    def _insert_keys(session: Session, slug: str, layout: BandLayout, rows: list[tuple[str, list[int]]]) -> None:
        # in key order: the inserts walk the primary key's pages once, front to back
        entries = sorted((k, _row_ref(h)) for h, ks in rows for k in ks)
        records = [{"datanet": slug, "layout": layout.name, "key": k, "row_ref": ref} for k, ref in entries]
        for i in range(0, len(records), 10 * _IN_CHUNK):
            session.connection().execute(_BANDS.insert(), records[i : i + 10 * _IN_CHUNK])

    def _key_missing(self, session: Session, slug: str, layout: BandLayout) -> None:
        """Key the datanet's signed rows that have no keys under this layout (rows stored before keys were, or
        under another threshold), once per process and datanet: afterwards every upload keys its own rows."""
        marker = (str(session.get_bind().engine.url), slug, layout.name)
        if marker in self._keyed:
            return
        signed = (DataRow.datanet == slug) & (func.length(DataRow.minhash) > 0)
        rows = session.execute(select(func.count()).where(signed)).scalar() or 0
        keys = session.execute(
            select(func.count()).where(RowBand.datanet == slug, RowBand.layout == layout.name)
        ).scalar()
        if keys != rows * layout.bands:
            session.execute(delete(RowBand).where(RowBand.datanet == slug, RowBand.layout == layout.name))
            batch: list[tuple[str, list[int]]] = []
            for row_hash, sig in session.execute(select(DataRow.row_hash, DataRow.minhash).where(signed)):
                batch.append((row_hash, layout.keys(bytes(sig))))
                if len(batch) >= 1000:
                    self._insert_keys(session, slug, layout, batch)
                    batch = []
            self._insert_keys(session, slug, layout, batch)
        # remembered only once this transaction commits: keys written by one that rolls back are gone again
        event.listen(session, "after_commit", lambda _session: self._keyed.add(marker), once=True)


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
    drop_duplicates: bool = False,
) -> Contribution:
    """Record an upload. `near_dups`: the caller's near-duplicate indexes, kept across uploads (None: built from the
    stored signatures for this call, which is correct but slower). `drop_duplicates`: rows that repeat an earlier row
    of the file or a row already in the datanet are left out and reported in `dropped` (else the upload is refused);
    a signature then covers the rows that are kept (`prepare_signing` says which)."""
    dn = _load(session, slug)
    if not principal.has("contributor", "owner"):
        raise ForbiddenError("contributing needs the contributor role")
    manager = is_manager(principal, dn)
    if dn.policy == "invite-only" and not (manager or is_member(session, principal, slug)):
        raise ForbiddenError(f"datanet {slug!r} is invite-only; ask its owner to invite {principal.address}")
    if dn.visibility == "private" and not can_read(session, principal, dn):
        raise ForbiddenError(f"datanet {slug!r} is private; you need its owner's invitation or a grant")

    parsed, rows, dropped = _kept_rows(session, dn, data, filename, settings, format, drop=drop_duplicates)
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

    status = "accepted" if dn.policy == "open" or manager else "pending"
    now = now_ts()
    contribution_id = _contribution_id(slug, principal.address, root, nonce)
    signatures: list[bytes] = [b""] * len(rows)
    similar: list[tuple[str, float] | None] = [None] * len(rows)
    if settings.near_dup_check:
        dedup = DedupSettings(threshold=settings.near_dup_threshold)
        near_dups = NearDups() if near_dups is None else near_dups
        hasher = near_dups.hasher(dedup)
        signatures = [hasher.signature(row.text) for row in rows]
        hashed = [(r.row_hash, sig) for r, sig in zip(rows, signatures, strict=True)]
        similar = near_dups.find(session, slug, dedup, hashed)
    records: list[dict[str, object]] = []
    near: list[dict[str, object]] = []
    for position, (row, sig, match) in enumerate(zip(rows, signatures, similar, strict=True)):
        dup_of, score = match if match is not None else (None, None)
        if match is not None:
            near.append({"row": row.row_hash, "line": row.line, "resembles": dup_of, "similarity": round(match[1], 3)})
        records.append(
            {
                "datanet": slug, "row_hash": row.row_hash, "contribution": contribution_id, "position": position,
                "line": row.line, "content": canonical_json(row.content).decode(), "minhash": sig,
                "near_dup_of": dup_of, "near_dup_score": score, "status": status,
                "reviewed_by": principal.address if status == "accepted" else None,
                "reviewed_at": now if status == "accepted" else None, "created_at": now,
            }
        )  # fmt: skip
    submitted = ContributionSubmitted(
        datanet=ledger_name(ledger, slug, dn.visibility), contribution=contribution_id,
        contributor=principal.address, content_root=root, rows=len(rows), license=dn.license,
        signed=signature is not None, near_duplicates=len(near), status=status,
    )  # fmt: skip
    appended = ledger.append(session, submitted, actor=principal.address)
    session.add(
        ContributionRow(
            id=contribution_id, datanet=slug, contributor=principal.address, filename=filename,
            format=parsed.format, content_root=root, license=dn.license, row_count=len(rows), signature=signature,
            nonce=None if nonce is None else str(nonce), created_at=now, ledger_seq=appended.seq,
        )
    )  # fmt: skip
    session.flush()
    session.execute(insert(DataRow), records)
    return Contribution(
        contribution_id, slug, principal.address, filename, parsed.format, root, dn.license, len(rows),
        signature is not None, status, near, appended.seq, [asdict(d) for d in dropped],
    )  # fmt: skip


@dataclass(frozen=True)
class SigningRequest:
    """What a contributor signs for an upload (EIP-712, `tally.identity.contribution_typed_data`)."""

    datanet: str
    content_root: str
    license: str
    nonce: int
    chain_id: int
    rows: int
    dropped: list[dict[str, object]]
    typed_data: dict[str, Any]

    def sign(self, private_key: str) -> str:
        """The signature a contributor's key makes over this (the CLI's --sign, the studio's server-side signing)."""
        return sign_contribution(
            private_key, datanet=self.datanet, content_root=self.content_root, license=self.license, nonce=self.nonce,
            chain_id=self.chain_id,
        )  # fmt: skip


def prepare_signing(
    session: Session,
    principal: Principal,
    slug: str,
    data: bytes,
    filename: str,
    *,
    settings: DatanetSettings,
    chain_id: int,
    format: str | None = None,
    drop_duplicates: bool = False,
    nonce: int | None = None,
) -> SigningRequest:
    """Parse an upload as `contribute` will and return the typed data to sign over its rows (after any dropped
    repeats), with a fresh random nonce unless one is given. Nothing is written."""
    dn = _load(session, slug)
    if not can_read(session, principal, dn):
        raise DatanetError(f"no datanet named {slug!r}", kind="not_found")
    _, rows, dropped = _kept_rows(session, dn, data, filename, settings, format, drop=drop_duplicates)
    root = content_root([r.row_hash for r in rows])
    nonce = secrets.randbits(64) if nonce is None else nonce
    typed = contribution_typed_data(slug, root, dn.license, nonce, chain_id)
    return SigningRequest(slug, root, dn.license, nonce, chain_id, len(rows), [asdict(d) for d in dropped], typed)


def _kept_rows(
    session: Session,
    dn: DatanetRow,
    data: bytes,
    filename: str,
    settings: DatanetSettings,
    fmt: str | None,
    *,
    drop: bool,
) -> tuple[ParsedUpload, list[Row], list[DroppedRow]]:
    """An upload parsed and checked as `contribute` stores it and `prepare_signing` signs it: the rows kept (repeats
    left out with `drop`, else refused) and those dropped."""
    if len(filename) > MAX_FILENAME:
        raise DatanetError(f"the file name is {len(filename)} characters; at most {MAX_FILENAME}", param="file")
    parsed = parse_for(dn.kind, data, filename, fmt, upload_limits(dn, settings), drop_duplicates=drop)
    rows, dropped = _without_existing(session, dn.slug, filename, parsed, drop=drop)
    return parsed, rows, dropped


def _contribution_id(slug: str, contributor: str, root: str, nonce: int | None) -> str:
    body = {
        "content_root": root,
        "contributor": contributor,
        "datanet": slug,
        "nonce": None if nonce is None else str(nonce),
    }
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _without_existing(
    session: Session, slug: str, filename: str, parsed: ParsedUpload, *, drop: bool
) -> tuple[list[Row], list[DroppedRow]]:
    """The rows not already in the datanet, and what was dropped. Without `drop`, exact duplicates of stored rows
    refuse the whole upload, naming the first one and listing each (`problems`)."""
    rows = parsed.rows
    by_hash = {r.row_hash: r for r in rows}
    hashes = list(by_hash)
    existing: dict[str, str] = {}
    for i in range(0, len(hashes), _IN_CHUNK):
        found = session.execute(
            select(DataRow.row_hash, DataRow.contribution).where(
                DataRow.datanet == slug, DataRow.row_hash.in_(hashes[i : i + _IN_CHUNK])
            )
        )
        existing.update((row_hash, contribution) for row_hash, contribution in found)
    if not existing:
        return rows, list(parsed.dropped)

    def where(row: Row) -> str:
        return f"line {row.line}" if row.line else f"chunk {row.content.get('chunk')}"

    repeated = [r for r in rows if r.row_hash in existing]
    if not drop:
        first = repeated[0]
        problems = [
            {
                "message": f"{filename} {where(r)}: this row is already in datanet {slug!r} "
                f"(contribution {existing[r.row_hash][:12]})",
                "file": filename, "line": r.line, "field": None, "contribution": existing[r.row_hash],
                "problem": f"already in datanet {slug!r} (contribution {existing[r.row_hash][:12]})",
                "expected": "rows the datanet does not hold yet",
            }
            for r in repeated[:MAX_PROBLEMS]
        ]  # fmt: skip
        raise DatanetError(
            f"{filename} {where(first)}: this row is already in datanet {slug!r} "
            f"(contribution {existing[first.row_hash][:12]}); exact duplicates are refused",
            kind="conflict",
            contribution=existing[first.row_hash],
            problems=problems,
        )
    dropped = list(parsed.dropped) + [
        DroppedRow(
            r.line, r.row_hash, f"already in datanet {slug!r} (contribution {existing[r.row_hash][:12]})",
            contribution=existing[r.row_hash],
        )
        for r in repeated
    ]  # fmt: skip
    kept = [r for r in rows if r.row_hash not in existing]
    if not kept:
        raise DatanetError(
            f"{filename}: every row is already in datanet {slug!r}; nothing to add", kind="conflict", param="file"
        )
    return kept, sorted(dropped, key=lambda d: (d.line or 0, d.row_hash))


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
