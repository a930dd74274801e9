"""The datanet tables as the ledger's events give them.

- `datanets`: owner, kind, license, uses, visibility and policy (`datanet.created`).
- `datanet_members`: one row per `datanet.member_invited`.
- `access_requests`: requester, uses, state and who decided; the purpose and reason against the commitments the
  events hold (or their text, in version 1 entries).
- `contributions`: datanet, contributor, content root, row count, license, signed or not, entry; the id recomputed
  from datanet, contributor, content root and nonce (so the nonce is bound too).
- `datanet_rows`: each contribution's rows, in position order, hash to its content root, and each row's content to
  its hash; each row's state is the last review that named it (`datanet.rows_reviewed`), else its contribution's
  state on submission, with who set it and the reason against the review's commitment.
- `signature_nonces`: one per signed contribution.
- `snapshots` and `snapshot_rows`: version, row count, contributors and creator; the member rows hash to the
  snapshot's root, and their contributors count what the event says.

Private datanets are named in the ledger by a keyed commitment to their slug: the audit computes it with the log's
key, as the server did. Not in the events, so not checked: descriptions, tags, upload limits, near-duplicate
flags and the times rows were written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from itertools import groupby
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tally.datanets.contribute import _contribution_id, content_root
from tally.datanets.events import (
    AccessDenied,
    AccessDeniedV2,
    AccessGranted,
    AccessGrantedV2,
    AccessRequested,
    AccessRequestedV2,
    ContributionSubmitted,
    DatanetCreated,
    MemberInvited,
    RowsReviewed,
    RowsReviewedV2,
    SnapshotCreated,
    commit_text,
    ledger_name,
)
from tally.datanets.snapshots import snapshot_root
from tally.datanets.tables import (
    AccessRequestRow,
    ContributionRow,
    DatanetRow,
    DataRow,
    MemberRow,
    SnapshotMember,
    SnapshotRow,
)
from tally.identity.tables import UsedNonce
from tally.ledger import Ledger
from tally.ledger.audit import Auditor, Divergence, Expected, Replayed, chunks, compare, extra_row, missing_row

_ACCESS = (AccessRequested, AccessRequestedV2, AccessGranted, AccessGrantedV2, AccessDenied, AccessDeniedV2)
_CONTRIBUTIONS_PER_QUERY = 100


class DatanetsAudit(Auditor):
    events = (DatanetCreated, MemberInvited, *_ACCESS, ContributionSubmitted, RowsReviewed, RowsReviewedV2,
              SnapshotCreated)  # fmt: skip
    tables = ("datanets", "datanet_members", "access_requests", "contributions", "datanet_rows", "signature_nonces",
              "snapshots", "snapshot_rows")  # fmt: skip

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self._commitments: dict[tuple[str, str], str] = {}
        self.datanets: dict[str, dict[str, Any]] | None = None  # ledger name -> the row, read once
        self.label: dict[str, str] = {}  # slug -> ledger name
        self.created: set[str] = set()
        self.members: Expected = {}
        self.requests: Expected = {}
        self.contributions: dict[str, tuple[str, str, str, int]] = {}  # id -> (ledger name, state, submitter, seq)
        self.reviews: dict[tuple[str, str], int] = {}  # (ledger name, row hash) -> its last review in review_log
        self.review_log: list[tuple[int, str, str, str | None, str | None]] = []  # seq, state, by, reason, commitment
        self.nonces: Expected = {}
        self.snapshots: set[tuple[str, str]] = set()  # (slug, root)
        self.snapshot_members = 0

    def commit(self, label: str, text: str) -> str:
        key = (label, text)
        if key not in self._commitments:
            self._commitments[key] = commit_text(self.ledger, label, text)
        return self._commitments[key]

    def slug(self, name: str) -> str:
        """A datanet's slug from its ledger name (the name itself when no row has it)."""
        row = (self.datanets or {}).get(name)
        return row["slug"] if row else name

    def _load(self, session: Session) -> dict[str, dict[str, Any]]:
        if self.datanets is None:
            self.datanets = {}
            for row in session.execute(select(DatanetRow.__table__)).mappings():
                name = ledger_name(self.ledger, row["slug"], row["visibility"])
                self.datanets[name], self.label[row["slug"]] = dict(row), name
        return self.datanets

    # ---- the events, batch by batch --------------------------------------------------------------------------

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        datanets = self._load(session)
        submitted, snapshots = [], []
        for seq, actor, event in batch:
            if isinstance(event, DatanetCreated):
                self.created.add(event.datanet)
                expected = {k: getattr(event, k) for k in ("owner", "kind", "license", "uses", "visibility", "policy")}
                found = datanets.get(event.datanet)
                if (divergence := compare("datanets", self.slug(event.datanet), expected, found, seq)) is not None:
                    return divergence
            elif isinstance(event, MemberInvited):
                self.members[(event.datanet, event.member)] = ({}, seq)
            elif isinstance(event, _ACCESS):
                self._access(seq, actor, event)
            elif isinstance(event, ContributionSubmitted):
                self.contributions[event.contribution] = (event.datanet, event.status, actor, seq)
                submitted.append((seq, event))
            elif isinstance(event, RowsReviewed | RowsReviewedV2):
                text = event.reason if isinstance(event, RowsReviewed) else None
                commitment = event.reason_commitment if isinstance(event, RowsReviewedV2) else None
                self.review_log.append((seq, event.decision, actor, text, commitment))
                for row_hash in event.rows:
                    self.reviews[(event.datanet, row_hash)] = len(self.review_log) - 1
            elif isinstance(event, SnapshotCreated):
                snapshots.append((seq, actor, event))
        for part in chunks(submitted, _CONTRIBUTIONS_PER_QUERY):
            if (divergence := self._contributions(session, list(part))) is not None:
                return divergence
        for seq, actor, snap in snapshots:
            if (divergence := self._snapshot(session, seq, actor, snap)) is not None:
                return divergence
        return None

    def _access(self, seq: int, actor: str, event: Any) -> None:
        if isinstance(event, AccessRequested | AccessRequestedV2):
            purpose = (
                {"purpose": event.purpose}
                if isinstance(event, AccessRequested)
                else {"purpose_commitment": event.purpose_commitment}
            )
            fields = {"datanet": event.datanet, "requester": event.requester, "uses": event.uses, **purpose}
            self.requests[event.request] = ({**fields, "status": "pending", "decided_by": None}, seq)
            return
        asked, _ = self.requests.get(event.request, ({"datanet": event.datanet, "requester": event.requester}, seq))
        granted = isinstance(event, AccessGranted | AccessGrantedV2)
        reason = (
            {"reason": event.reason}
            if isinstance(event, AccessGranted | AccessDenied)
            else {"reason_commitment": event.reason_commitment}
        )
        decided = {"status": "granted" if granted else "denied", "decided_by": actor, **reason}
        self.requests[event.request] = ({**asked, **({"uses": event.uses} if granted else {}), **decided}, seq)

    def _contributions(self, session: Session, part: list[tuple[int, ContributionSubmitted]]) -> Divergence | None:
        ids = [event.contribution for _, event in part]
        query = select(ContributionRow.__table__).where(ContributionRow.id.in_(ids))
        found = {row["id"]: row for row in session.execute(query).mappings()}
        for seq, event in part:
            row = found.get(event.contribution)
            self.checked("contributions", int(row is not None))
            if row is None:
                return missing_row("contributions", event.contribution, seq)
            expected = {
                "datanet": event.datanet, "contributor": event.contributor, "content_root": event.content_root,
                "row_count": event.rows, "license": event.license, "signed": event.signed, "ledger_seq": seq,
                "id (from datanet, contributor, content root, nonce)": event.contribution,
            }  # fmt: skip
            have = {
                **row, "datanet": self.label.get(row["datanet"], row["datanet"]),
                "signed": row["signature"] is not None,
                "id (from datanet, contributor, content root, nonce)": _recomputed_id(row),
            }  # fmt: skip
            if (divergence := compare("contributions", event.contribution, expected, have, seq)) is not None:
                return divergence
            if event.signed:
                self.nonces[(row["contributor"], row["nonce"])] = ({}, seq)
        rows = session.execute(
            select(DataRow.contribution, DataRow.datanet, DataRow.position, DataRow.row_hash, DataRow.content)
            .where(DataRow.contribution.in_(ids))
            .order_by(DataRow.contribution, DataRow.position)
            .execution_options(yield_per=2000)
        )
        by_contribution = {event.contribution: (seq, event) for seq, event in part}
        seen = set()
        for contribution, group in groupby(rows, key=lambda r: r[0]):
            seen.add(contribution)
            seq, event = by_contribution[contribution]
            if (divergence := self._rows(seq, event, list(group))) is not None:
                return divergence
        for seq, event in part:
            if event.contribution not in seen and event.rows:
                return Divergence("datanet_rows", f"contribution {event.contribution}", "rows", event.rows, 0, seq)
        return None

    def _rows(self, seq: int, event: ContributionSubmitted, rows: list[Any]) -> Divergence | None:
        """One contribution's rows against its event: their count, positions, content hashes and content root."""
        where = f"contribution {event.contribution}"
        if len(rows) != event.rows:
            return Divergence("datanet_rows", where, "rows", event.rows, len(rows), seq)
        slug = self.slug(event.datanet)
        for position, (_, datanet, at, row_hash, content) in enumerate(rows):
            key = f"{datanet} {row_hash}"
            if datanet != slug:
                return Divergence("datanet_rows", key, "datanet", slug, datanet, seq)
            if at != position:
                return Divergence("datanet_rows", key, "position", position, at, seq)
            digest = hashlib.sha256(content.encode()).hexdigest()
            if digest != row_hash:
                return Divergence("datanet_rows", key, "row_hash (SHA-256 of its content)", row_hash, digest, seq)
        root = content_root([r[3] for r in rows])
        if root != event.content_root:
            return Divergence("datanet_rows", where, "content_root (of its rows)", event.content_root, root, seq)
        return None

    def _snapshot(self, session: Session, seq: int, actor: str, event: SnapshotCreated) -> Divergence | None:
        slug = self.slug(event.datanet)
        key = f"{slug} {event.snapshot}"
        self.snapshots.add((slug, event.snapshot))
        self.snapshot_members += event.rows
        row = session.execute(
            select(SnapshotRow.__table__).where(SnapshotRow.datanet == slug, SnapshotRow.id == event.snapshot)
        ).mappings().first()  # fmt: skip
        self.checked("snapshots", int(row is not None))
        expected = {"version": event.version, "row_count": event.rows, "contributors": event.contributors,
                    "created_by": actor, "ledger_seq": seq}  # fmt: skip
        if (divergence := compare("snapshots", key, expected, row, seq)) is not None:
            return divergence
        members = (SnapshotMember.datanet == slug) & (SnapshotMember.snapshot == event.snapshot)
        hashes = list(session.execute(select(SnapshotMember.row_hash).where(members)).scalars())
        self.checked("snapshot_rows", len(hashes))
        if len(hashes) != event.rows:
            return Divergence("snapshot_rows", key, "rows", event.rows, len(hashes), seq)
        root = snapshot_root(hashes)
        if root != event.snapshot:
            return Divergence("snapshot_rows", key, "root (of its rows)", event.snapshot, root, seq)
        contributors = session.execute(
            select(ContributionRow.contributor, func.count())
            .select_from(SnapshotMember)
            .join(DataRow, (DataRow.datanet == SnapshotMember.datanet) & (DataRow.row_hash == SnapshotMember.row_hash))
            .join(ContributionRow, ContributionRow.id == DataRow.contribution)
            .where(members)
            .group_by(ContributionRow.contributor)
        ).all()
        counted = dict(sorted((str(who), int(n)) for who, n in contributors))
        if counted != event.contributors:
            return Divergence("snapshot_rows", key, "contributors (of its rows)", event.contributors, counted, seq)
        return None

    # ---- after the last event --------------------------------------------------------------------------------

    def finish(self, session: Session) -> Divergence | None:
        datanets = self._load(session)
        for name, row in sorted(datanets.items(), key=lambda kv: kv[1]["slug"]):
            self.checked("datanets")
            if name not in self.created:
                return extra_row("datanets", row["slug"])
        checks = (
            lambda: self.check_rows("datanet_members", self._members(session), self.members, self._member_key),
            lambda: self.check_rows("access_requests", self._requests(session), self.requests, lambda k: f"#{k}"),
            lambda: self._extra_contributions(session),
            lambda: self._row_states(session),
            lambda: self.check_rows("signature_nonces", self._nonces(session), self.nonces, lambda k: " ".join(k)),
            lambda: self._extra_snapshots(session),
        )
        for check in checks:
            if (divergence := check()) is not None:
                return divergence
        return None

    def _member_key(self, key: tuple[str, str]) -> str:
        return f"{self.slug(key[0])} {key[1]}"

    def _members(self, session: Session) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
        for datanet, address in session.execute(select(MemberRow.datanet, MemberRow.address)):
            yield (self.label.get(datanet, datanet), address), {}

    def _requests(self, session: Session) -> Iterator[tuple[int, dict[str, Any]]]:
        for row in session.execute(select(AccessRequestRow.__table__).order_by(AccessRequestRow.id)).mappings():
            yield row["id"], {
                **row, "datanet": self.label.get(row["datanet"], row["datanet"]),
                "purpose_commitment": self.commit("access-purpose", row["purpose"]),
                "reason_commitment": self.commit("access-reason", row["reason"] or ""),
            }  # fmt: skip

    def _nonces(self, session: Session) -> Iterator[tuple[tuple[str, str], dict[str, Any]]]:
        for address, nonce in session.execute(select(UsedNonce.address, UsedNonce.nonce)):
            yield (address, nonce), {}

    def _extra_contributions(self, session: Session) -> Divergence | None:
        total = session.execute(select(func.count()).select_from(ContributionRow)).scalar_one()
        if total > len(self.contributions):
            for (cid,) in session.execute(select(ContributionRow.id).execution_options(yield_per=5000)):
                if cid not in self.contributions:
                    return extra_row("contributions", cid)
        return None

    def _row_states(self, session: Session) -> Divergence | None:
        """Every row's state: the last review that named it, else its contribution's state on submission."""
        query = select(
            DataRow.datanet, DataRow.row_hash, DataRow.contribution, DataRow.status, DataRow.reviewed_by,
            DataRow.reason,
        ).order_by(DataRow.datanet, DataRow.row_hash)  # fmt: skip
        for datanet, row_hash, contribution, status, reviewed_by, reason in session.execute(
            query.execution_options(yield_per=5000)
        ):
            key = f"{datanet} {row_hash}"
            self.checked("datanet_rows")
            known = self.contributions.get(contribution)
            if known is None:
                return extra_row("datanet_rows", key)
            name, state, submitter, seq = known
            found: dict[str, Any] = {"status": status, "reviewed_by": reviewed_by, "reason": reason}
            review = self.reviews.get((name, row_hash))
            if review is None:
                by = submitter if state == "accepted" else None
                expected: dict[str, Any] = {"status": state, "reviewed_by": by, "reason": None}
            else:
                seq, decision, by, text, commitment = self.review_log[review]
                expected = {"status": decision, "reviewed_by": by}
                if commitment is None:
                    expected["reason"] = text or None
                else:
                    expected["reason_commitment"] = commitment
                    found["reason_commitment"] = self.commit("review-reason", reason or "")
            if (divergence := compare("datanet_rows", key, expected, found, seq)) is not None:
                return divergence
        return None

    def _extra_snapshots(self, session: Session) -> Divergence | None:
        total = session.execute(select(func.count()).select_from(SnapshotRow)).scalar_one()
        if total > len(self.snapshots):
            for slug, root in session.execute(select(SnapshotRow.datanet, SnapshotRow.id)):
                if (slug, root) not in self.snapshots:
                    return extra_row("snapshots", f"{slug} {root}")
        members = session.execute(select(func.count()).select_from(SnapshotMember)).scalar_one()
        if members > self.snapshot_members:
            query = select(SnapshotMember.datanet, SnapshotMember.snapshot, SnapshotMember.row_hash)
            for slug, root, row_hash in session.execute(query.execution_options(yield_per=5000)):
                if (slug, root) not in self.snapshots:
                    return extra_row("snapshot_rows", f"{slug} {root} {row_hash}")
        return None


def _recomputed_id(row: Any) -> str:
    nonce = row["nonce"]
    if nonce is not None and not nonce.isdigit():
        return f"(nonce {nonce!r} is not a number)"
    return _contribution_id(
        row["datanet"], row["contributor"], row["content_root"], None if nonce is None else int(nonce)
    )
