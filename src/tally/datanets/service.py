"""Datanets: create, read, list, invite, and who may do what with them.

Permissions, in one place:
- create a datanet: role owner (or admin); the creator owns it.
- contribute: role contributor, owner or admin; invite-only and private datanets also need membership
  (or ownership); rows of open datanets are accepted at once, others wait for the owner's review.
- review, snapshot, invite, decide access: the datanet's owner with the owner role on the key (or admin).
- read rows, snapshots, exports: public datanets for any key; private ones for the owner, members, admins, and
  holders of a granted access request. Using data (train, rag, eval, commercial) also needs the datanet's
  permitted uses to include that use, and for private datanets a grant covering it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from sqlalchemy import ColumnElement, String, case, cast, func, select, true
from sqlalchemy.orm import Session

from tally.datanets.errors import DatanetError, ForbiddenError, NotFoundError
from tally.datanets.events import DatanetCreated, MemberInvited, ledger_name
from tally.datanets.licenses import normalize_license
from tally.datanets.tables import AccessRequestRow, ContributionRow, DatanetRow, DataRow, MemberRow
from tally.identity import Principal, get_account
from tally.identity.tables import AccountRow
from tally.ledger import Ledger
from tally.ledger.events import now_ts

KINDS = ("instruction", "chat", "documents")
USES = ("train", "rag", "eval", "commercial", "export")
VISIBILITIES = ("public", "private")
POLICIES = ("open", "owner-reviewed", "invite-only")
_SLUG = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")


@dataclass(frozen=True)
class Datanet:
    slug: str
    description: str
    tags: list[str]
    kind: str
    license: str
    uses: list[str]
    visibility: str
    policy: str
    max_upload_bytes: int
    max_rows_per_day: int
    owner: str
    created_at: str

    @classmethod
    def of(cls, row: DatanetRow) -> Datanet:
        return cls(
            row.slug, row.description, list(row.tags), row.kind, row.license, list(row.uses), row.visibility,
            row.policy, row.max_upload_bytes, row.max_rows_per_day, row.owner, row.created_at,
        )  # fmt: skip


def _choice(field: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise DatanetError(f"{field} {value!r} is not one of {', '.join(allowed)}", param=field)
    return value


def check_uses(uses: list[str]) -> list[str]:
    for use in uses:
        _choice("use", use, USES)
    return sorted(set(uses))


def create_datanet(
    session: Session,
    ledger: Ledger,
    principal: Principal,
    slug: str,
    *,
    kind: str,
    license: str,
    uses: list[str],
    description: str = "",
    tags: list[str] | None = None,
    visibility: str = "public",
    policy: str = "owner-reviewed",
    max_upload_bytes: int,
    max_rows_per_day: int,
) -> Datanet:
    if not principal.has("owner"):
        raise ForbiddenError("creating a datanet needs the owner role")
    if not _SLUG.match(slug):
        raise DatanetError(
            f"name {slug!r} must be a slug: 1-64 of a-z, 0-9 and '-', not starting or ending with '-'", param="name"
        )
    if session.get(DatanetRow, slug) is not None:
        raise DatanetError(f"a datanet named {slug!r} already exists", kind="conflict", param="name")
    if max_upload_bytes < 1 or max_rows_per_day < 1:
        raise DatanetError("limits must be positive")
    row = DatanetRow(
        slug=slug,
        description=description,
        tags=sorted(set(tags or [])),
        kind=_choice("kind", kind, KINDS),
        license=normalize_license(license),
        uses=check_uses(uses),
        visibility=_choice("visibility", visibility, VISIBILITIES),
        policy=_choice("policy", policy, POLICIES),
        max_upload_bytes=max_upload_bytes,
        max_rows_per_day=max_rows_per_day,
        owner=principal.address,
        created_at=now_ts(),
    )
    session.add(row)
    session.flush()
    event = DatanetCreated(
        datanet=ledger_name(ledger, slug, row.visibility), owner=principal.address, kind=row.kind, license=row.license,
        uses=row.uses, visibility=row.visibility, policy=row.policy,
    )  # fmt: skip
    ledger.append(session, event, actor=principal.address)
    return Datanet.of(row)


def _load(session: Session, slug: str) -> DatanetRow:
    row = session.get(DatanetRow, slug)
    if row is None:
        raise NotFoundError(f"no datanet named {slug!r}")
    return row


def is_owner(principal: Principal, dn: DatanetRow | Datanet) -> bool:
    """The caller's account owns the datanet (whatever its key's roles): enough to read and use its data."""
    return principal.address == dn.owner or "admin" in principal.roles


def is_manager(principal: Principal, dn: DatanetRow | Datanet) -> bool:
    """The caller may manage the datanet: its account owns it and its key holds the owner role (a key narrowed to
    `consumer` cannot review, invite or grant), or it is an admin."""
    return (principal.address == dn.owner and "owner" in principal.roles) or "admin" in principal.roles


def is_member(session: Session, principal: Principal, slug: str) -> bool:
    return session.get(MemberRow, (slug, principal.address)) is not None


def granted_uses(session: Session, principal: Principal, slug: str) -> set[str]:
    rows = session.execute(
        select(AccessRequestRow.uses).where(
            AccessRequestRow.datanet == slug,
            AccessRequestRow.requester == principal.address,
            AccessRequestRow.status == "granted",
        )
    ).scalars()
    return {use for uses in rows for use in uses}


def can_read(session: Session, principal: Principal, dn: DatanetRow | Datanet) -> bool:
    if dn.visibility == "public" or is_owner(principal, dn) or is_member(session, principal, dn.slug):
        return True
    return bool(granted_uses(session, principal, dn.slug))


def get_datanet(session: Session, principal: Principal, slug: str) -> Datanet:
    """A datanet the caller may see; a private one they may not read is reported as not found."""
    row = _load(session, slug)
    if not can_read(session, principal, row):
        raise NotFoundError(f"no datanet named {slug!r}")
    return Datanet.of(row)


def readable_slugs(session: Session, principal: Principal | None) -> set[str]:
    """The datanets `principal` may read (None, anonymous: the public ones), as `can_read` decides for one, in three
    queries whatever the number of datanets (answers ask this for every attributed answer)."""
    if principal is not None and "admin" in principal.roles:
        return set(session.execute(select(DatanetRow.slug)).scalars())
    address = principal.address if principal is not None else None
    public_or_owned = (DatanetRow.visibility == "public") | (DatanetRow.owner == address)
    slugs = set(session.execute(select(DatanetRow.slug).where(public_or_owned)).scalars())
    if address is not None:
        slugs |= set(session.execute(select(MemberRow.datanet).where(MemberRow.address == address)).scalars())
        granted = (AccessRequestRow.requester == address) & (AccessRequestRow.status == "granted")
        for slug, uses in session.execute(select(AccessRequestRow.datanet, AccessRequestRow.uses).where(granted)):
            if uses:
                slugs.add(slug)
    return slugs


def list_datanets(session: Session, principal: Principal) -> list[Datanet]:
    return search_datanets(session, principal)


def manage(session: Session, principal: Principal, slug: str, action: str) -> DatanetRow:
    """The datanet, if the caller owns it (or is an admin); else ForbiddenError naming the action."""
    row = _load(session, slug)
    if not is_manager(principal, row):
        if not can_read(session, principal, row):
            raise NotFoundError(f"no datanet named {slug!r}")
        raise ForbiddenError(f"only the owner of {slug!r} (or an admin) may {action}")
    return row


def check_use(session: Session, principal: Principal, slug: str, use: str) -> Datanet:
    """Raise unless the caller may use this datanet's data for `use` (train, rag, eval, commercial)."""
    _choice("use", use, USES)
    row = _load(session, slug)
    if use not in row.uses:
        raise ForbiddenError(
            f"datanet {slug!r} (license {row.license}) does not permit use {use!r}; permitted: {', '.join(row.uses)}"
        )
    if row.visibility == "public" or is_owner(principal, row) or is_member(session, principal, slug):
        return Datanet.of(row)
    if use not in granted_uses(session, principal, slug):
        raise ForbiddenError(f"datanet {slug!r} is private and you hold no grant for {use!r}; request access first")
    return Datanet.of(row)


def ledger_label(session: Session, ledger: Ledger, slug: str) -> str:
    """How other packages name this datanet in the public ledger: its slug if public, a keyed commitment if
    private (so a retrieval, training or evaluation entry does not reveal a private datanet's name)."""
    return ledger_name(ledger, slug, _load(session, slug).visibility)


def check_export(session: Session, principal: Principal, slug: str) -> Datanet:
    """Raise unless the caller may take a whole copy: anyone for a public datanet; for a private one its owner,
    members and holders of an `export` grant (a grant for train, rag or eval is not a licence to copy)."""
    row = _load(session, slug)
    if row.visibility == "public" or is_owner(principal, row) or is_member(session, principal, slug):
        return Datanet.of(row)
    if not can_read(session, principal, row):
        raise NotFoundError(f"no datanet named {slug!r}")
    if "export" not in granted_uses(session, principal, slug):
        raise ForbiddenError(
            f"datanet {slug!r} is private and your grant does not cover 'export'; request access for export"
        )
    return Datanet.of(row)


def invite_member(session: Session, ledger: Ledger, principal: Principal, slug: str, address: str) -> None:
    dn = manage(session, principal, slug, "invite members")
    account = get_account(session, address)
    if account is None:
        raise DatanetError(f"no account at {address!r}", kind="not_found", param="address")
    if session.get(MemberRow, (slug, account.address)) is None:
        session.add(MemberRow(datanet=slug, address=account.address, added_at=now_ts()))
        session.flush()
        event = MemberInvited(datanet=ledger_name(ledger, slug, dn.visibility), member=account.address)
        ledger.append(session, event, actor=principal.address)


def list_rows(
    session: Session, principal: Principal, slug: str, *, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[dict[str, object]]:
    """Rows with their review state. Owners see all rows; readers see accepted rows and their own."""
    dn = _load(session, slug)
    if not can_read(session, principal, dn):
        raise NotFoundError(f"no datanet named {slug!r}")
    query = (
        select(DataRow, ContributionRow.contributor)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(DataRow.datanet == slug)
    )
    if status is not None:
        query = query.where(DataRow.status == _choice("status", status, ("pending", "accepted", "rejected")))
    if not is_manager(principal, dn):
        query = query.where((DataRow.status == "accepted") | (ContributionRow.contributor == principal.address))
    # The page's keys first (a sort of narrow rows), then those rows in full: sorting whole rows (their content) to
    # skip an offset costs far more at depth.
    page = (
        query.with_only_columns(DataRow.row_hash)
        .order_by(DataRow.created_at, DataRow.contribution, DataRow.position)
        .limit(limit)
        .offset(offset)
    )
    hashes = list(session.execute(page).scalars())
    if not hashes:
        return []
    full = (
        select(DataRow, ContributionRow.contributor)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(DataRow.datanet == slug, DataRow.row_hash.in_(hashes))
    )
    found = {r.row_hash: (r, contributor) for r, contributor in session.execute(full)}
    return [
        {
            "row_hash": r.row_hash,
            "contribution": r.contribution,
            "contributor": contributor,
            "line": r.line,
            "status": r.status,
            "reason": r.reason,
            "near_dup_of": r.near_dup_of,
            "near_dup_score": r.near_dup_score,
            "content": json.loads(r.content),
        }
        for r, contributor in (found[h] for h in hashes)
    ]


MAX_QUERY_CHARS = 200  # a datanet search is a few words


def _readable(principal: Principal | None) -> ColumnElement[bool]:
    """`can_read` as a SQL condition on DatanetRow, for lists that page in the database."""
    if principal is not None and "admin" in principal.roles:
        return true()
    condition: ColumnElement[bool] = DatanetRow.visibility == "public"
    if principal is None:
        return condition
    member = select(MemberRow.datanet).where(MemberRow.address == principal.address)
    granted = select(AccessRequestRow.datanet).where(
        AccessRequestRow.requester == principal.address, AccessRequestRow.status == "granted"
    )
    mine = (DatanetRow.owner == principal.address) | DatanetRow.slug.in_(member) | DatanetRow.slug.in_(granted)
    return condition | mine


def search_datanets(
    session: Session, principal: Principal, query: str = "", *, after: str | None = None, limit: int | None = None
) -> list[Datanet]:
    """Datanets the caller may read whose name, description, tags or license contain every word of `query`
    (case-insensitive), by name; `after` and `limit` page through them (keyset on the name)."""
    if len(query) > MAX_QUERY_CHARS:
        raise DatanetError(f"a search is at most {MAX_QUERY_CHARS} characters, not {len(query)}", param="q")
    statement = select(DatanetRow).where(_readable(principal))
    haystack = func.lower(
        DatanetRow.slug + " " + DatanetRow.description + " " + cast(DatanetRow.tags, String) + " " + DatanetRow.license
    )
    for word in query.lower().split():
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(haystack.like(f"%{escaped}%", escape="\\"))
    if after is not None:
        statement = statement.where(DatanetRow.slug > after)
    statement = statement.order_by(DatanetRow.slug)
    if limit is not None:
        statement = statement.limit(limit)
    return [Datanet.of(r) for r in session.execute(statement).scalars()]


@dataclass(frozen=True)
class ContributorStanding:
    address: str
    name: str | None
    accepted: int
    pending: int
    rejected: int
    contributions: int
    first_at: str


def contributor_leaderboard(
    session: Session, principal: Principal, slug: str, *, limit: int = 50, offset: int = 0
) -> list[ContributorStanding]:
    """A datanet's contributors ranked by accepted rows (then pending, then address), counted in the database."""
    get_datanet(session, principal, slug)
    # rows counted per contribution first (the rows' own index), then contributions summed per contributor
    per_contribution = (
        select(
            DataRow.contribution.label("contribution"),
            func.sum(case((DataRow.status == "accepted", 1), else_=0)).label("accepted"),
            func.sum(case((DataRow.status == "pending", 1), else_=0)).label("pending"),
            func.sum(case((DataRow.status == "rejected", 1), else_=0)).label("rejected"),
        )
        .where(DataRow.datanet == slug)
        .group_by(DataRow.contribution)
        .subquery()
    )
    accepted = func.sum(per_contribution.c.accepted)
    pending = func.sum(per_contribution.c.pending)
    statement = (
        select(
            ContributionRow.contributor, AccountRow.name, accepted, pending, func.sum(per_contribution.c.rejected),
            func.count(ContributionRow.id), func.min(ContributionRow.created_at),
        )
        .join(per_contribution, per_contribution.c.contribution == ContributionRow.id)
        .outerjoin(AccountRow, AccountRow.address == ContributionRow.contributor)
        .group_by(ContributionRow.contributor, AccountRow.name)
        .order_by(accepted.desc(), pending.desc(), ContributionRow.contributor)
        .limit(limit)
        .offset(offset)
    )  # fmt: skip
    return [
        ContributorStanding(address, name, int(a or 0), int(p or 0), int(r or 0), int(n), first)
        for address, name, a, p, r, n, first in session.execute(statement)
    ]


def rows_by_hash(session: Session, principal: Principal, slug: str, row_hashes: list[str]) -> dict[str, dict]:
    """Rows of a datanet by hash (as `list_rows` shows them, with the same visibility), for showing a row beside its
    near-duplicate; hashes the caller may not see are left out."""
    dn = _load(session, slug)
    if not can_read(session, principal, dn):
        raise NotFoundError(f"no datanet named {slug!r}")
    wanted = sorted(set(row_hashes))[:1000]
    query = (
        select(DataRow, ContributionRow.contributor)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(DataRow.datanet == slug, DataRow.row_hash.in_(wanted))
    )
    if not is_manager(principal, dn):
        query = query.where((DataRow.status == "accepted") | (ContributionRow.contributor == principal.address))
    return {
        r.row_hash: {
            "row_hash": r.row_hash, "contribution": r.contribution, "contributor": contributor, "line": r.line,
            "status": r.status, "content": json.loads(r.content),
        }
        for r, contributor in session.execute(query)
    }  # fmt: skip
