"""The identity tables as the ledger's events give them: every account with its name and roles, every API key
with its account, roles, expiry and whether it was revoked.

Not in the events, so not checked: a key's secret hash and label, and the times rows were written (an entry's own
timestamp is taken a moment apart from its row's). Used signature nonces follow from signed contributions: the
datanets audit checks them.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.identity.events import AccountCreated, ApiKeyCreated, ApiKeyRevoked
from tally.identity.tables import AccountRow, ApiKeyRow
from tally.ledger.audit import Auditor, Divergence, Expected, Replayed


class IdentityAudit(Auditor):
    events = (AccountCreated, ApiKeyCreated, ApiKeyRevoked)
    tables = ("accounts", "api_keys")

    def __init__(self) -> None:
        super().__init__()
        self.accounts: Expected = {}
        self.keys: Expected = {}

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        for seq, _, event in batch:
            if isinstance(event, AccountCreated):
                self.accounts[event.address] = ({"name": event.name, "roles": ",".join(event.roles)}, seq)
            elif isinstance(event, ApiKeyCreated):
                fields = {"account": event.account, "roles": ",".join(event.roles), "expires_at": event.expires_at}
                self.keys[event.key_id] = ({**fields, "revoked": False}, seq)
            elif isinstance(event, ApiKeyRevoked):
                created, _ = self.keys.get(event.key_id, ({}, seq))
                self.keys[event.key_id] = ({**created, "account": event.account, "revoked": True}, seq)
        return None

    def finish(self, session: Session) -> Divergence | None:
        accounts = session.execute(select(AccountRow.address, AccountRow.name, AccountRow.roles))
        rows = ((a, {"name": name, "roles": roles}) for a, name, roles in accounts)
        if (divergence := self.check_rows("accounts", rows, self.accounts)) is not None:
            return divergence
        keys = session.execute(
            select(ApiKeyRow.key_id, ApiKeyRow.account, ApiKeyRow.roles, ApiKeyRow.expires_at, ApiKeyRow.revoked_at)
        )
        found = (
            (key_id, {"account": account, "roles": roles, "expires_at": expires, "revoked": revoked is not None})
            for key_id, account, roles, expires, revoked in keys
        )
        return self.check_rows("api_keys", found, self.keys)
