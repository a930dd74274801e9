"""The factory tables as the ledger's events give them, and the adapter files the events name by hash.

- `factory_adapters`: one row per trained adapter (`factory.adapter_trained`; training the same weights again
  replaces it): name, base model, developer, entry, and whether it was published since
  (`factory.adapter_published`). The manifest the row holds, the `manifest.json` in its directory and the
  directory's weights and config must hash to what the entry recorded (`manifest_hash`, `adapter_hash`).
- `factory_publications`: one row per `factory.adapter_published`: served name, adapter, who published it. (Its
  `state` is the registry file's outbox, and its path is absolute where the entry shows it relative to the data
  directory: neither is compared.)
- `factory_evals`: one row per `factory.evaluated`: model, adapter, datanet, snapshot, examples, metrics, who ran it.

Not in the events, so not checked: fine-tuning jobs and pipeline runs (a job's outcome is its adapter, which is
checked), the serving registry file `adapters.json`, model cards and `evaluations.json` (rewritten after each
evaluation, from the evaluation rows).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from tally.datanets.events import ledger_name
from tally.datanets.tables import DatanetRow
from tally.engine.files import hash_adapter
from tally.engine.manifest import MANIFEST_NAME
from tally.factory.events import AdapterPublished, AdapterTrained, ModelEvaluated
from tally.factory.tables import AdapterRow, EvalRow, PublicationRow
from tally.ledger import Ledger
from tally.ledger.audit import Auditor, Divergence, Expected, Replayed, chunks, compare, extra_row

MANIFEST_ROW = "manifest (SHA-256 of its manifest.json form)"
MANIFEST_FILE = "manifest.json on disk (SHA-256)"
ADAPTER_FILES = "weights and config on disk (adapter hash)"


class FactoryAudit(Auditor):
    events = (AdapterTrained, AdapterPublished, ModelEvaluated)
    tables = ("factory_adapters", "factory_publications", "factory_evals")

    def __init__(self, ledger: Ledger) -> None:
        super().__init__()
        self.ledger = ledger
        self.adapters: Expected = {}
        self.evals: set[int] = set()  # seqs of factory.evaluated entries
        self.publications: set[int] = set()  # seqs of factory.adapter_published entries
        self.names: dict[str, str] = {}  # datanet slug -> its name in the ledger

    def apply(self, session: Session, batch: list[Replayed]) -> Divergence | None:
        published: list[tuple[int, dict[str, Any]]] = []
        evaluated: list[tuple[int, dict[str, Any]]] = []
        for seq, actor, event in batch:
            if isinstance(event, AdapterTrained):
                self.adapters[event.adapter_hash] = ({
                    "name": event.adapter, "base_model": event.base_model, "created_by": actor, "ledger_seq": seq,
                    "published": 0, MANIFEST_ROW: event.manifest_hash, MANIFEST_FILE: event.manifest_hash,
                    ADAPTER_FILES: event.adapter_hash,
                }, seq)  # fmt: skip
            elif isinstance(event, AdapterPublished):
                if event.adapter_hash in self.adapters:  # one trained elsewhere has no adapter row to mark
                    trained, _ = self.adapters[event.adapter_hash]
                    self.adapters[event.adapter_hash] = ({**trained, "published": 1}, seq)
                self.publications.add(seq)
                published.append(
                    (seq, {"name": event.adapter, "adapter_id": event.adapter_hash, "published_by": actor})
                )
            elif isinstance(event, ModelEvaluated):
                self.evals.add(seq)
                evaluated.append((seq, {
                    "model": event.model, "adapter_id": event.adapter_hash, "datanet": event.datanet,
                    "snapshot": event.snapshot, "examples": event.examples, "metrics": event.metrics,
                    "created_by": actor,
                }))  # fmt: skip
        return self._by_entry(session, PublicationRow, "factory_publications", published) or self._by_entry(
            session, EvalRow, "factory_evals", evaluated
        )

    def _by_entry(
        self, session: Session, table: Any, name: str, expected: list[tuple[int, dict[str, Any]]]
    ) -> Divergence | None:
        """Rows written one per entry, found by their `ledger_seq`."""
        for part in chunks(expected):
            query = select(table.__table__).where(table.ledger_seq.in_([seq for seq, _ in part]))
            rows = {r["ledger_seq"]: r for r in session.execute(query).mappings()}
            for seq, fields in part:
                row = rows.get(seq)
                self.checked(name, int(row is not None))
                found = {**row, "datanet": self._name(session, row["datanet"])} if row and "datanet" in row else row
                if (divergence := compare(name, f"entry {seq}", fields, found, seq)) is not None:
                    return divergence
        return None

    def _name(self, session: Session, slug: str) -> str:
        if slug not in self.names:
            visibility = session.execute(select(DatanetRow.visibility).where(DatanetRow.slug == slug)).scalar()
            self.names[slug] = ledger_name(self.ledger, slug, visibility) if visibility else slug
        return self.names[slug]

    def finish(self, session: Session) -> Divergence | None:
        rows = session.execute(select(AdapterRow.__table__).order_by(AdapterRow.ledger_seq)).mappings()
        found = ((r["id"], _with_hashes(r)) for r in rows)
        if (divergence := self.check_rows("factory_adapters", found, self.adapters)) is not None:
            return divergence
        for table, name, seqs in (
            (PublicationRow, "factory_publications", self.publications), (EvalRow, "factory_evals", self.evals),
        ):  # fmt: skip
            total = session.execute(select(func.count()).select_from(table)).scalar_one()
            if total > len(seqs):
                for row_id, seq in session.execute(select(table.id, table.ledger_seq)):
                    if seq not in seqs:
                        return extra_row(name, f"id {row_id} (entry {seq})")
        return None


def _with_hashes(row: Any) -> dict[str, Any]:
    """The row, with the hashes of its manifest and of the files in its directory."""
    path = Path(row["path"])
    # manifest.json is written as `tally.engine.manifest.manifest_text` writes it: sorted keys, indent 1, newline
    text = json.dumps(row["manifest"], sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    return {
        **row,
        MANIFEST_ROW: hashlib.sha256(text.encode()).hexdigest(),
        MANIFEST_FILE: _file_hash(path / MANIFEST_NAME),
        ADAPTER_FILES: _adapter_hash(path),
    }


def _file_hash(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"


def _adapter_hash(path: Path) -> str:
    try:
        return hash_adapter(path)
    except OSError as exc:
        return f"(unreadable: {exc.strerror or exc})"
