"""Review: the owner accepts or rejects rows or whole contributions, with a reason."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, NotFoundError
from tally.datanets.events import RowsReviewedV2, commit_text, ledger_name
from tally.datanets.service import manage
from tally.datanets.tables import ContributionRow, DataRow
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts

DECISIONS = {"accept": "accepted", "reject": "rejected"}


def review(
    session: Session,
    ledger: Ledger,
    principal: Principal,
    slug: str,
    *,
    decision: str,
    reason: str = "",
    contribution: str | None = None,
    rows: list[str] | None = None,
) -> int:
    """Set the status of a contribution's rows, or of the listed rows; returns how many changed."""
    dn = manage(session, principal, slug, "review contributions")
    if decision not in DECISIONS:
        raise DatanetError(f"decision {decision!r} must be accept or reject", param="decision")
    if decision == "reject" and not reason.strip():
        raise DatanetError("a rejection needs a reason, so the contributor learns why", param="reason")
    if (contribution is None) == (not rows):
        raise DatanetError("name either a contribution or a list of rows")
    query = select(DataRow).where(DataRow.datanet == slug)
    if contribution is not None:
        by_prefix = ContributionRow.id.startswith(contribution)
        matches = session.execute(
            select(ContributionRow.id).where(ContributionRow.datanet == slug, by_prefix)
        ).scalars().all()  # fmt: skip
        if len(matches) != 1:
            # none is not found; more than one is an ambiguous prefix: invalid
            what, error = ("no", NotFoundError) if not matches else ("more than one", DatanetError)
            raise error(f"{what} contribution {contribution!r} in datanet {slug!r}", param="contribution")
        contribution = matches[0]
        query = query.where(DataRow.contribution == contribution)
    else:
        query = query.where(DataRow.row_hash.in_(rows or []))
    found = list(session.execute(query).scalars())
    if rows:
        missing = set(rows) - {r.row_hash for r in found}
        if missing:
            raise NotFoundError(f"no row {sorted(missing)[0]} in datanet {slug!r}", param="rows")
    status, now = DECISIONS[decision], now_ts()
    changed = [r for r in found if r.status != status]
    for r in changed:
        r.status, r.reason, r.reviewed_by, r.reviewed_at = status, reason.strip() or None, principal.address, now
    if changed:
        event = RowsReviewedV2(
            datanet=ledger_name(ledger, slug, dn.visibility), contribution=contribution, decision=status,
            rows=sorted(r.row_hash for r in changed),
            reason_commitment=commit_text(ledger, "review-reason", reason.strip()),  # the text stays in the database
        )  # fmt: skip
        ledger.append(session, event, actor=principal.address)
    return len(changed)
