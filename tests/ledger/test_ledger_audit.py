"""The audit framework: entries streamed by type in batches, a divergence described, an audit stopped at the first."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session
from tests.conftest import Note, append_notes

from tally.config.errors import TallyError
from tally.ledger import Event, Ledger, LedgerError
from tally.ledger.audit import (
    AuditError,
    Auditor,
    Divergence,
    Expected,
    Replayed,
    entry_type,
    replay,
    run_audit,
)


class Nested(Event):
    """A payload that holds the envelope's key names itself."""

    event_type: ClassVar[str] = "test.audit_nested"
    data: dict[str, Any]


class Counted(Event):
    event_type: ClassVar[str] = "test.audit_counted"
    n: int


class CountedV2(Event):
    event_type: ClassVar[str] = "test.audit_counted"
    schema_version: ClassVar[int] = 2
    n: int


def _append(ledger: Ledger, *events: Event) -> None:
    with ledger.store.transaction() as s:
        ledger.append_batch(s, [(e, "tester") for e in events])


def test_the_type_is_read_from_the_envelope_whatever_the_payload_holds(ledger: Ledger) -> None:
    tricky = {"type": "test.note", "v": 1, "x": ',"type":"test.note"', "seq": 5}
    _append(ledger, Nested(data=tricky), Note(text='","type":"test.audit_nested'))
    bodies = ledger.entries(1, 2)
    assert [entry_type(b) for b in bodies] == [b"test.audit_nested", b"test.note"]


def test_replay_streams_only_the_wanted_types_in_batches(ledger: Ledger) -> None:
    append_notes(ledger, 5)
    _append(ledger, *[Counted(n=i) for i in range(7)])
    append_notes(ledger, 3)
    with ledger.store.read() as s:
        batches = list(replay(ledger, s, {"test.audit_counted"}, end=ledger.size(s), batch=4))
    assert [read for read, _ in batches] == [4, 4, 4, 4]
    found = [r for _, part in batches for r in part]
    assert [r.event for r in found] == [Counted(n=i) for i in range(7)]
    assert [r.seq for r in found] == list(range(6, 13)) and {r.actor for r in found} == {"tester"}


def test_replay_refuses_a_version_it_cannot_decode(ledger: Ledger) -> None:
    _append(ledger, Counted(n=1))
    with ledger.store.transaction() as s:  # an entry written by a newer installation
        body = ledger.entries(1, 1, s)[0].replace(b'"v":1}', b'"v":9}')
        s.execute(
            text("UPDATE ledger_bundles SET entries = :e WHERE seq = 1"),
            {"e": len(body).to_bytes(4, "big") + body},
        )
    with ledger.store.read() as s, pytest.raises(LedgerError, match="test.audit_counted version 9"):
        list(replay(ledger, s, {"test.audit_counted"}, end=2))


class CountingAudit(Auditor):
    """Expects the table `counts` to hold one row per event, keyed by n; the 'table' is a dict here."""

    events = (Counted,)
    tables = ("counts",)

    def __init__(self, table: dict[int, dict[str, Any]]) -> None:
        super().__init__()
        self.table, self.batches = table, 0
        self.expected: Expected = {}

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        self.batches += 1
        for seq, actor, event in batch:
            assert isinstance(event, Counted)
            self.expected[event.n] = ({"actor": actor}, seq)
        return None

    def finish(self, session: Session) -> Divergence | None:
        return self.check_rows("counts", sorted(self.table.items()), self.expected, lambda n: f"n={n}")


def test_run_audit_reports_counts_and_the_first_divergence(ledger: Ledger) -> None:
    _append(ledger, *[Counted(n=i) for i in range(5)])
    table = {i: {"actor": "tester"} for i in range(5)}
    with ledger.store.read() as s:
        clean = run_audit(ledger, s, [CountingAudit(table)], batch=2)
    assert clean.clean and (clean.size, clean.events, clean.tables) == (6, 5, {"counts": 5})

    table[3] = {"actor": "mallory"}
    table[9] = {"actor": "tester"}
    with ledger.store.read() as s:
        report = run_audit(ledger, s, [CountingAudit(table)])
    assert report.divergence == Divergence("counts", "n=3", "actor", "tester", "mallory", 4)
    assert report.tables == {"counts": 4}  # stopped at the first
    del table[3]
    with ledger.store.read() as s:
        missing = run_audit(ledger, s, [CountingAudit(table)]).divergence
    assert missing == Divergence("counts", "n=9", "row", "(no row)", "(a row)", None)
    del table[9]
    with ledger.store.read() as s:
        gone = run_audit(ledger, s, [CountingAudit(table)]).divergence
    assert gone == Divergence("counts", "n=3", "row", "(a row)", "(no row)", 4)


def test_an_audit_refuses_an_audited_type_in_a_version_no_auditor_knows(ledger: Ledger) -> None:
    _append(ledger, Counted(n=1), CountedV2(n=2))
    with ledger.store.read() as s, pytest.raises(LedgerError, match="entry 2 is test.audit_counted version 2"):
        run_audit(ledger, s, [CountingAudit({})])


def test_a_divergence_is_a_conflict_naming_table_key_and_both_values() -> None:
    d = Divergence("rewards_balances", "0xabc", "accrued", "450", "451", 17)
    error = AuditError(d)
    assert isinstance(error, TallyError) and error.kind == "conflict" and error.divergence is d
    assert error.message == 'state audit failed: rewards_balances 0xabc: accrued is "451" in the table, the ledger ' \
        '(entry 17) gives "450"'  # fmt: skip
    assert error.values == {"table": "rewards_balances", "key": "0xabc", "field": "accrued", "expected": "450",
                            "found": "451", "seq": 17}  # fmt: skip
    assert "a row" in Divergence("t", "k", "row", "(a row)", "(no row)", 3).describe()
