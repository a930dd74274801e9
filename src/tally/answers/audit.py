"""The state audit: every package's tables re-derived from the ledger's events, in one pass over the log.

report = audit(store, ledger)   # an AuditReport; report.raise_for_divergence() raises AuditError (kind conflict)

The packages run in the design's order (identity, datanets, rewards, factory), each checking its own tables; the
first divergence stops the audit. See docs/audit.md for what is checked and what is not.
"""

from __future__ import annotations

from collections.abc import Callable

from tally.datanets.audit import DatanetsAudit
from tally.factory.audit import FactoryAudit
from tally.identity.audit import IdentityAudit
from tally.ledger import Ledger
from tally.ledger.audit import BATCH, AuditError, Auditor, AuditReport, Divergence, run_audit
from tally.rewards.audit import RewardsAudit
from tally.store import Store

__all__ = ["AuditError", "AuditReport", "Divergence", "audit", "auditors"]


def auditors(ledger: Ledger) -> list[Auditor]:
    return [IdentityAudit(), DatanetsAudit(ledger), RewardsAudit(ledger), FactoryAudit(ledger)]


def audit(
    store: Store, ledger: Ledger, *, batch: int = BATCH, progress: Callable[[int, int], None] | None = None
) -> AuditReport:
    """Replay the whole log against the tables, all read in one read session: one snapshot (a SQLite read
    transaction, a repeatable-read one on PostgreSQL), so a server writing meanwhile neither hides nor invents a
    divergence. `progress(entries read, entries)`."""
    with store.read() as session:
        return run_audit(ledger, session, auditors(ledger), batch=batch, progress=progress)
