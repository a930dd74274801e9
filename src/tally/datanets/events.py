"""Datanet ledger events: one per state change, committed with it."""

from __future__ import annotations

from typing import ClassVar

from tally.ledger import Event


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


class MemberInvited(Event):
    event_type: ClassVar[str] = "datanet.member_invited"
    datanet: str
    member: str
