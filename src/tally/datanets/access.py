"""Access requests to private datanets, in the manner of gated datasets: ask with a purpose, owner decides."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, NotFoundError
from tally.datanets.events import AccessDeniedV2, AccessGrantedV2, AccessRequestedV2, commit_text, ledger_name
from tally.datanets.service import _load, check_uses, is_manager, manage
from tally.datanets.tables import AccessRequestRow
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts


@dataclass(frozen=True)
class AccessRequest:
    id: int
    datanet: str
    requester: str
    uses: list[str]
    purpose: str
    status: str
    reason: str | None
    decided_by: str | None
    created_at: str
    decided_at: str | None

    @classmethod
    def of(cls, r: AccessRequestRow) -> AccessRequest:
        return cls(
            r.id, r.datanet, r.requester, list(r.uses), r.purpose, r.status, r.reason, r.decided_by, r.created_at,
            r.decided_at,
        )  # fmt: skip


def request_access(
    session: Session, ledger: Ledger, principal: Principal, slug: str, *, uses: list[str], purpose: str
) -> AccessRequest:
    dn = _load(session, slug)
    if dn.visibility != "private":
        raise DatanetError(f"datanet {slug!r} is public: no access request is needed", kind="conflict")
    if not purpose.strip():
        raise DatanetError("say what the data is for (purpose)", param="purpose")
    wanted = check_uses(uses)
    if not wanted:
        raise DatanetError("name at least one use: train, rag, eval, commercial or export", param="uses")
    beyond = [u for u in wanted if u not in dn.uses]
    if beyond:
        raise DatanetError(
            f"datanet {slug!r} does not permit {beyond[0]!r} under its license; permitted: {dn.uses}", param="uses"
        )
    pending = session.execute(
        select(AccessRequestRow.id).where(
            AccessRequestRow.datanet == slug,
            AccessRequestRow.requester == principal.address,
            AccessRequestRow.status == "pending",
        )
    ).scalar()
    if pending is not None:  # one open request per requester: the owner's queue is not for flooding
        raise DatanetError(
            f"you already have a pending access request #{pending} for {slug!r}; wait for the owner's decision",
            kind="conflict", request=pending,
        )  # fmt: skip
    row = AccessRequestRow(
        datanet=slug, requester=principal.address, uses=wanted, purpose=purpose.strip(), status="pending",
        created_at=now_ts(),
    )  # fmt: skip
    session.add(row)
    session.flush()
    event = AccessRequestedV2(
        datanet=ledger_name(ledger, slug, dn.visibility),
        request=row.id,
        requester=principal.address,
        uses=wanted,
        purpose_commitment=commit_text(ledger, "access-purpose", row.purpose),
    )
    ledger.append(session, event, actor=principal.address)
    return AccessRequest.of(row)


def decide_access(
    session: Session, ledger: Ledger, principal: Principal, slug: str, request_id: int, *, grant: bool, reason: str
) -> AccessRequest:
    dn = manage(session, principal, slug, "grant or deny access")
    row = session.get(AccessRequestRow, request_id)
    if row is None or row.datanet != slug:
        raise NotFoundError(f"no access request {request_id} on datanet {slug!r}")
    if row.status != "pending":
        raise DatanetError(f"access request {request_id} was already {row.status}", kind="conflict", status=row.status)
    if not grant and not reason.strip():
        raise DatanetError("a denial needs a reason", param="reason")
    row.status, row.reason, row.decided_by, row.decided_at = (
        "granted" if grant else "denied", reason.strip(), principal.address, now_ts(),
    )  # fmt: skip
    reason_commitment = commit_text(ledger, "access-reason", row.reason or "")  # the text stays in the database
    if grant:
        event: AccessGrantedV2 | AccessDeniedV2 = AccessGrantedV2(
            datanet=ledger_name(ledger, slug, dn.visibility),
            request=row.id,
            requester=row.requester,
            uses=list(row.uses),
            reason_commitment=reason_commitment,
        )
    else:
        event = AccessDeniedV2(
            datanet=ledger_name(ledger, slug, dn.visibility),
            request=row.id,
            requester=row.requester,
            reason_commitment=reason_commitment,
        )
    ledger.append(session, event, actor=principal.address)
    return AccessRequest.of(row)


def list_access_requests(session: Session, principal: Principal, slug: str) -> list[AccessRequest]:
    """Owners see every request on their datanet; anyone else sees their own."""
    dn = _load(session, slug)
    query = select(AccessRequestRow).where(AccessRequestRow.datanet == slug).order_by(AccessRequestRow.id)
    if not is_manager(principal, dn):
        query = query.where(AccessRequestRow.requester == principal.address)
    return [AccessRequest.of(r) for r in session.execute(query).scalars()]
