"""Every end-to-end test ends with the state audit of its database: whatever the flow did through the CLI, the
server or the packages, every table the ledger's events determine must agree with them (docs/audit.md)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tally.answers.audit import audit
from tally.config import Settings
from tally.ledger import open_ledger
from tally.store import open_store


@pytest.fixture(autouse=True)
def audited(settings: Settings) -> Iterator[None]:
    """After the test (and before its database goes away), audit it; a divergence fails the test."""
    yield
    if settings.database_url is None and not (settings.data_dir / "tally.db").exists():
        return  # the test never made a database: nothing to audit, and none to create
    store = open_store(settings)
    try:
        report = audit(store, open_ledger(settings, store))
    finally:
        store.dispose()
    if report.divergence is not None:
        pytest.fail(f"the state audit after this test failed: {report.divergence.describe()}", pytrace=False)
