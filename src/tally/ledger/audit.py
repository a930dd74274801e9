"""The state audit's framework: replay the log's events, re-derive the tables they determine, name the first row
that differs.

`tally ledger verify` proves the log itself is intact; this checks the state the events determine. Each package
that writes events supplies an `Auditor` for its own tables (`tally.<package>.audit`), and `run_audit` streams the
log once, in seq order and in batches, handing each auditor the events it knows. An auditor keeps only what later
events or its final check need (keys, running totals), compares each event's rows while its batch is at hand, and
reports rows no event accounts for at the end. The first difference stops the audit: a `Divergence` naming the
table, the row's key, the field, the value the events give and the value the table holds. See docs/audit.md.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.ledger.events import Event, event_class
from tally.ledger.log import Ledger, LedgerError

BATCH = 4096  # entries read and decoded at a time
NO_ROW = "(no row)"
A_ROW = "(a row)"
Expected = dict[Any, tuple[dict[str, Any], int]]  # a row's key -> (its fields as the events give them, the entry)


@dataclass(frozen=True)
class Divergence:
    """One difference between a table and the ledger's events."""

    table: str
    key: str
    field: str
    expected: Any  # what the events give (NO_ROW: the events account for no such row)
    found: Any  # what the table holds (NO_ROW: it holds no such row)
    seq: int | None  # the entry the expected value comes from; None for a row that no entry accounts for

    def describe(self) -> str:
        source = f"the ledger (entry {self.seq})" if self.seq is not None else "the ledger"
        return (
            f"{self.table} {self.key}: {self.field} is {_shown(self.found)} in the table, "
            f"{source} gives {_shown(self.expected)}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "table": self.table, "key": self.key, "field": self.field, "expected": _plain(self.expected),
            "found": _plain(self.found), "seq": self.seq,
        }  # fmt: skip


def _plain(value: Any) -> Any:
    """A value as JSON carries it (tuples as lists, anything else unusual as text)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(v) for v in value]
    return str(value)


def _shown(value: Any) -> str:
    if value in (NO_ROW, A_ROW):
        return str(value)
    text = json.dumps(_plain(value), sort_keys=True, ensure_ascii=False)
    return text if len(text) <= 300 else text[:297] + "..."


class AuditError(TallyError):
    """The stored state differs from what the ledger's events give; `divergence` says where."""

    kind = "conflict"

    def __init__(self, divergence: Divergence) -> None:
        super().__init__(f"state audit failed: {divergence.describe()}", **divergence.as_json())
        self.divergence = divergence


def missing_row(table: str, key: str, seq: int | None) -> Divergence:
    return Divergence(table, key, "row", A_ROW, NO_ROW, seq)


def extra_row(table: str, key: str) -> Divergence:
    return Divergence(table, key, "row", NO_ROW, A_ROW, None)


def compare(
    table: str, key: str, expected: Mapping[str, Any], found: Mapping[Any, Any] | None, seq: int | None
) -> Divergence | None:
    """The first field of `expected` that `found` (a row as a mapping, None when missing) holds differently."""
    if found is None:
        return missing_row(table, key, seq)
    for name, value in expected.items():
        if found[name] != value:
            return Divergence(table, key, name, value, found[name], seq)
    return None


def chunks(items: Sequence[Any], size: int = 500) -> Iterator[Sequence[Any]]:
    """Slices of at most `size` (bound parameters per IN query stay well under every backend's limit)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Replayed(NamedTuple):
    """One entry of an audited type: its position, who wrote it, and its typed event."""

    seq: int
    actor: str
    event: Event


_TYPE_KEY = b',"type":"'


def entry_type(body: bytes) -> bytes:
    """The envelope's `type`, read from the end of the entry without parsing it: the envelope's keys are sorted, so
    `type` and `v` are its last two, after every byte of the payload."""
    at = body.rfind(_TYPE_KEY)
    if at < 0:
        return b""  # not an entry at all: `tally ledger verify` names it
    start = at + len(_TYPE_KEY)
    return body[start : body.find(b'"', start)]


def replay(
    ledger: Ledger, session: Session, types: Collection[str], *, end: int, batch: int = BATCH
) -> Iterator[tuple[int, list[Replayed]]]:
    """(entries read, the decoded entries among them whose type is in `types`) for consecutive runs of `batch`
    entries of [0, end), read inside `session` (one snapshot of the database). Entries of other types are never
    parsed."""
    wanted = {t.encode() for t in types}
    for start in range(0, end, batch):
        count = min(batch, end - start)
        bodies = ledger.entries(start, count, session)
        if len(bodies) != count:
            raise LedgerError(
                f"entry {start + len(bodies)} is missing from the log; run `tally ledger verify`",
                seq=start + len(bodies),
            )
        found = [_decode(seq, body) for seq, body in enumerate(bodies, start) if entry_type(body) in wanted]
        yield count, found


def _decode(seq: int, body: bytes) -> Replayed:
    try:
        raw = json.loads(body)
        at, actor, kind, version = raw["seq"], raw["actor"], raw["type"], raw["v"]
        cls = event_class(kind, version)
        event = cls.model_validate(raw["payload"]) if cls is not None else None
    except (ValueError, KeyError, TypeError) as exc:  # pydantic's ValidationError is a ValueError
        raise LedgerError(
            f"entry {seq} is not a well-formed entry ({exc}); run `tally ledger verify`", seq=seq
        ) from exc
    if event is None:
        raise LedgerError(
            f"entry {seq} is {kind} version {version}, which this installation cannot replay; audit with the "
            "version of Tally that wrote it", seq=seq, type=kind, version=version,
        )  # fmt: skip
    if at != seq:
        raise LedgerError(f"entry {seq} says it is entry {at}; run `tally ledger verify`", seq=seq)
    return Replayed(seq, actor, event)


class Auditor:
    """Re-derives one package's tables from its events. A subclass lists the event classes it applies (each type
    and version it understands) and the tables it checks, in the order it reports them."""

    events: ClassVar[tuple[type[Event], ...]] = ()
    tables: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.rows: dict[str, int] = dict.fromkeys(self.tables, 0)  # table -> rows compared

    def checked(self, table: str, rows: int = 1) -> None:
        self.rows[table] += rows

    def check_rows(
        self,
        table: str,
        rows: Iterable[tuple[Hashable, Mapping[Any, Any]]],
        expected: Expected,
        name: Callable[[Any], str] = str,
    ) -> Divergence | None:
        """Compare a whole table, row by row (key, fields), with what the events give (key -> (fields, seq)), taking
        the keys out of `expected` as they are met; a row no event gives, or an event's row that is not there, is a
        divergence too. `name` shows a key."""
        for key, found in rows:
            self.checked(table)
            item = expected.pop(key, None)
            if item is None:
                return extra_row(table, name(key))
            if (divergence := compare(table, name(key), item[0], found, item[1])) is not None:
                return divergence
        if expected:
            key, (_, seq) = min(expected.items(), key=lambda kv: kv[1][1])
            return missing_row(table, name(key), seq)
        return None

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        """Take in this batch's events (in seq order); compare the rows they alone determine."""
        raise NotImplementedError

    def finish(self, session: Session) -> Divergence | None:
        """After the last event: compare what later events could still change, and find rows no event explains."""
        raise NotImplementedError


@dataclass
class AuditReport:
    size: int  # entries in the log when the audit began; all were read
    events: int = 0  # entries of the audited types, replayed
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows compared
    divergence: Divergence | None = None
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.divergence is None

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean, "entries": self.size, "events": self.events, "tables": dict(self.tables),
            "divergence": self.divergence.as_json() if self.divergence else None, "seconds": round(self.seconds, 3),
        }  # fmt: skip

    def raise_for_divergence(self) -> None:
        if self.divergence is not None:
            raise AuditError(self.divergence)


def run_audit(
    ledger: Ledger,
    session: Session,
    auditors: Sequence[Auditor],
    *,
    batch: int = BATCH,
    progress: Callable[[int, int], None] | None = None,
) -> AuditReport:
    """Replay the whole log once through `auditors` (in their order within each batch), then let each finish; stop
    at the first divergence. Everything is read through `session`, so the log and the tables are one snapshot.
    `progress(entries read, entries in all)` is called after each batch."""
    began = time.perf_counter()
    routes: dict[type[Event], Auditor] = {}
    for auditor in auditors:
        for cls in auditor.events:
            routes[cls] = auditor
    report = AuditReport(size=ledger.size(session))
    types = {cls.event_type for cls in routes}
    divergence = None
    done = 0
    for read, found in replay(ledger, session, types, end=report.size, batch=batch):
        done += read
        report.events += len(found)
        for r in found:
            if type(r.event) not in routes:  # a version of an audited type that no auditor understands
                raise LedgerError(
                    f"entry {r.seq} is {r.event.event_type} version {r.event.schema_version}, which the audit "
                    "does not know how to replay", seq=r.seq,
                )  # fmt: skip
        for auditor in auditors:
            mine = [r for r in found if routes[type(r.event)] is auditor]
            if mine and (divergence := auditor.apply(session, mine)) is not None:
                break
        if divergence is not None:
            break
        if progress is not None:
            progress(done, report.size)
    else:
        for auditor in auditors:
            if (divergence := auditor.finish(session)) is not None:
                break
    for auditor in auditors:
        report.tables.update(auditor.rows)
    report.divergence = divergence
    report.seconds = time.perf_counter() - began
    return report
