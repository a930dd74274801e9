"""Identity ledger events."""

from __future__ import annotations

from typing import ClassVar

from tally.ledger import Event


class AccountCreated(Event):
    event_type: ClassVar[str] = "identity.account_created"
    address: str
    name: str
    roles: list[str]


class ApiKeyCreated(Event):
    event_type: ClassVar[str] = "identity.key_created"
    key_id: str
    account: str
    roles: list[str]
    expires_at: str | None


class ApiKeyRevoked(Event):
    event_type: ClassVar[str] = "identity.key_revoked"
    key_id: str
    account: str
