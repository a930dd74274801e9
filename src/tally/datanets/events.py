"""Datanet ledger events: one per state change, committed with it.

The ledger is public, so what is private enters it as a commitment (`commit_text`), with the text kept in the
database for those allowed to read it: a private datanet's name (`ledger_name`) and an access request's purpose
(`AccessRequestedV2`). Entries written before keep their fields and decode as they did.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import ClassVar

from tally.ledger import Event, Ledger

PRIVATE_PREFIX = "hmac-sha256:"


def commit_text(ledger: Ledger, label: str, text: str) -> str:
    """A keyed hash of `text`: the same text always gives the same value (so entries about one private datanet can
    be linked), but nobody without the log's key can test a guess, as they could against a plain hash of a short
    name. The key is derived from the log key by signing a fixed note that is never published."""
    key = hashlib.sha256(ledger.signer.sign("tally.ledger/commitment-key/v1\n").encode()).digest()
    return PRIVATE_PREFIX + hmac.new(key, f"{label}\n{text}".encode(), hashlib.sha256).hexdigest()


def ledger_name(ledger: Ledger, slug: str, visibility: str) -> str:
    """How a datanet is named in the ledger: its slug when public, a commitment to the slug when private."""
    return slug if visibility == "public" else commit_text(ledger, "datanet", slug)


class DatanetCreated(Event):
    event_type: ClassVar[str] = "datanet.created"
    datanet: str
    owner: str
    kind: str
    license: str
    uses: list[str]
    visibility: str
    policy: str


class ContributionSubmitted(Event):
    event_type: ClassVar[str] = "datanet.contribution_submitted"
    datanet: str
    contribution: str
    contributor: str
    content_root: str
    rows: int
    license: str
    signed: bool
    near_duplicates: int
    status: str  # accepted (open datanet) | pending (awaiting the owner's review)


class RowsReviewed(Event):
    event_type: ClassVar[str] = "datanet.rows_reviewed"
    datanet: str
    contribution: str | None
    decision: str  # accepted | rejected
    rows: list[str]
    reason: str


class RowsReviewedV2(Event):
    """A review decision; its free-text reason is in the database, the ledger holds a commitment to it."""

    event_type: ClassVar[str] = "datanet.rows_reviewed"
    schema_version: ClassVar[int] = 2
    datanet: str
    contribution: str | None
    decision: str  # accepted | rejected
    rows: list[str]
    reason_commitment: str


class SnapshotCreated(Event):
    event_type: ClassVar[str] = "datanet.snapshot_created"
    datanet: str
    snapshot: str
    version: int
    rows: int
    contributors: dict[str, int]


class AccessRequested(Event):
    event_type: ClassVar[str] = "datanet.access_requested"
    datanet: str
    request: int
    requester: str
    uses: list[str]
    purpose: str


class AccessRequestedV2(Event):
    """An access request; its free-text purpose is in the database, the ledger holds a commitment to it."""

    event_type: ClassVar[str] = "datanet.access_requested"
    schema_version: ClassVar[int] = 2
    datanet: str
    request: int
    requester: str
    uses: list[str]
    purpose_commitment: str


class AccessGranted(Event):
    event_type: ClassVar[str] = "datanet.access_granted"
    datanet: str
    request: int
    requester: str
    uses: list[str]
    reason: str


class AccessDenied(Event):
    event_type: ClassVar[str] = "datanet.access_denied"
    datanet: str
    request: int
    requester: str
    reason: str


class AccessGrantedV2(Event):
    """A grant; the owner's free-text reason is in the database, the ledger holds a commitment to it."""

    event_type: ClassVar[str] = "datanet.access_granted"
    schema_version: ClassVar[int] = 2
    datanet: str
    request: int
    requester: str
    uses: list[str]
    reason_commitment: str


class AccessDeniedV2(Event):
    """A denial; the owner's free-text reason is in the database, the ledger holds a commitment to it."""

    event_type: ClassVar[str] = "datanet.access_denied"
    schema_version: ClassVar[int] = 2
    datanet: str
    request: int
    requester: str
    reason_commitment: str


class MemberInvited(Event):
    event_type: ClassVar[str] = "datanet.member_invited"
    datanet: str
    member: str
