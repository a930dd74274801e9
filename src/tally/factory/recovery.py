"""What a start does about what a crash left: finish or undo half-done adapter publications, clear temporary
files, fail the local jobs whose process died, and report what it leaves alone.

Run by every worker as it starts and by `tally serve` before it starts its workers; safe to run at any time, by
any number of processes (it holds the publication lock, and it never touches a staging directory whose training
process is alive: that process holds the directory's lock). See docs/reliability.md.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import func, select

from tally.config import Settings
from tally.config.errors import TallyError
from tally.engine.manifest import (
    MANIFEST_NAME,
    AdapterEvaluations,
    Evaluation,
    read_adapter_manifest,
    read_evaluations,
    write_evaluations,
)
from tally.engine.registry import read_registry, registry_path
from tally.factory.lease import ACTIVE, reap
from tally.factory.provenance import CARD_NAME, model_card, write_text_atomic
from tally.factory.publication import (
    file_lock,
    move_back,
    publish_lock,
    read_marker,
    register,
    staging_dir,
    staging_lock_path,
)
from tally.factory.tables import AdapterRow, EvalRow, JobRow, PublicationRow
from tally.store import Store

log = logging.getLogger(__name__)

PARTIAL = ".partial"
TEMP_AGE_S = 600.0  # a registry temporary file older than this is a crashed writer's


@dataclass
class RecoveryReport:
    registered: list[str] = field(default_factory=list)  # pending publications now in the registry
    rolled_back: list[str] = field(default_factory=list)  # adapter directories no row recorded, back in staging
    removed: list[str] = field(default_factory=list)  # temporary files and directories of crashed writers
    refreshed: list[str] = field(default_factory=list)  # adapters whose evaluations.json lagged their evaluations
    failed_jobs: list[str] = field(default_factory=list)  # local jobs whose process died
    leftovers: list[str] = field(default_factory=list)  # reported, left alone: what they are and what to do

    def lines(self) -> list[str]:
        out = [f"publication written to adapters.json: {x}" for x in self.registered]
        out += [f"adapter directory with no record moved back to staging: {x}" for x in self.rolled_back]
        out += [f"removed: {x}" for x in self.removed]
        out += [f"evaluations.json brought up to date: {x}" for x in self.refreshed]
        out += [f"job interrupted, marked failed: {x}" for x in self.failed_jobs]
        return out + [f"left alone: {x}" for x in self.leftovers]


def _roots(settings: Settings) -> list[Path]:
    return [settings.data_dir / "adapters", settings.data_dir / "pipelines"]


def _manifest_hash(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))["adapter"]["hash"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _roll_back(settings: Settings, store: Store, final: Path, report: RecoveryReport) -> bool:
    """Under the publication lock: move an adapter directory that no row records back into staging."""
    if not (final / MANIFEST_NAME).is_file():
        return False  # not a factory adapter (or an empty directory): not ours to judge
    adapter_hash = _manifest_hash(final)
    if adapter_hash is None:
        report.leftovers.append(f"{final}: its {MANIFEST_NAME} is unreadable")
        return False
    with store.read() as s:
        row = s.get(AdapterRow, adapter_hash)
        recorded_at = Path(row.path) if row is not None else None
    if recorded_at is not None:
        if recorded_at != final.resolve():  # identical weights under two names keep one row: not ours to undo
            report.leftovers.append(
                f"{final}: holds the same weights as the adapter recorded at {recorded_at}; if the ledger has no "
                "`factory.adapter_trained` entry for this directory's manifest, it is a leftover: remove it"
            )  # fmt: skip
        return False
    served = {Path(e.path) for e in read_registry(registry_path(settings.data_dir)).values()}
    if final.resolve() in served:
        report.leftovers.append(f"{final}: served by adapters.json but recorded nowhere (added by hand?)")
        return False
    if not _written_here(store, final):
        report.leftovers.append(f"{final}: an adapter no row records and no job here wrote (copied in?); left as is")
        return False
    stage = staging_dir(final)
    if stage.exists():
        report.leftovers.append(f"{final}: no row records it, and its staging directory {stage.name} exists too")
        return False
    move_back(final, stage)
    report.rolled_back.append(str(final))
    log.warning("adapter directory %s had no record (a crash before its commit): moved back to %s", final, stage)
    return True


def _written_here(store: Store, final: Path) -> bool:
    """Whether a job of this installation wrote the directory: its `.job` marker names a job whose output is this
    directory (or, for a pipeline, holds it). Nothing else is ever moved: an adapter copied in from elsewhere, or an
    `output.dir` pointing at someone's folder, is left as it is."""
    job_id = read_marker(final)
    if job_id is None:
        return False
    with store.read() as s:
        output = s.execute(select(JobRow.output_dir).where(JobRow.id == job_id)).scalar()
    return output is not None and (Path(output) == final or final.is_relative_to(Path(output)))


def roll_back_orphan(settings: Settings, store: Store, final: Path) -> bool:
    """Before training into `final`: if it holds an adapter a crash left unrecorded, move it back to staging."""
    if not final.is_dir():
        return False
    with publish_lock(settings):
        return _roll_back(settings, store, final, RecoveryReport())


def _pending_publications(settings: Settings, store: Store, report: RecoveryReport) -> None:
    with store.read() as s:
        pending = list(
            s.execute(select(PublicationRow.id).where(PublicationRow.state == "pending").order_by(PublicationRow.id))
            .scalars()
        )  # fmt: skip
    for pub_id in pending:
        try:
            entry = register(settings, store, pub_id)
        except Exception as exc:  # a directory gone since: reported, retried at the next start
            report.leftovers.append(f"publication {pub_id}: could not be written to adapters.json ({exc})")
            continue
        report.registered.append(f"{entry['name']} -> {entry['adapter_id'][:12]}")


def _staging(settings: Settings, store: Store, stage: Path, report: RecoveryReport) -> None:
    with file_lock(staging_lock_path(stage), blocking=False) as free:
        if not free:
            return  # a live process trains into it
        for tmp in sorted((stage / "checkpoints").glob("*.tmp")):
            shutil.rmtree(tmp, ignore_errors=True)
            report.removed.append(str(tmp))
        final = stage.with_name(stage.name[1 : -len(PARTIAL)])
        pipelines = settings.data_dir / "pipelines"
        in_pipeline = final.is_relative_to(pipelines)
        # a pipeline job names its pipeline's folder; a training job, its adapter's
        owner = pipelines / final.relative_to(pipelines).parts[0] if in_pipeline else final
        with store.read() as s:
            active = s.execute(
                select(JobRow.id).where(JobRow.output_dir == str(owner), JobRow.status.in_(ACTIVE)).limit(1)
            ).scalar()
        if active is None:
            how = "running the pipeline again resumes it" if in_pipeline else "`tally train --resume` continues it"
            report.leftovers.append(f"{stage}: an unfinished training ({how}; delete it to discard it)")


def _evaluations(store: Store, report: RecoveryReport) -> None:
    """An adapter's evaluations.json (and card) are rewritten after each evaluation's transaction; one a crash left
    behind its evaluation rows is written again."""
    with store.read() as s:
        counts = dict(
            s.execute(
                select(EvalRow.adapter_id, func.count()).where(EvalRow.adapter_id.is_not(None))
                .group_by(EvalRow.adapter_id)
            ).tuples().all()
        )  # fmt: skip
        paths = dict(
            s.execute(select(AdapterRow.id, AdapterRow.path).where(AdapterRow.id.in_(list(counts)))).tuples().all()
        )
    for adapter_id, path in sorted(paths.items()):
        directory = Path(path)
        try:
            if not directory.is_dir() or len(read_evaluations(directory, adapter_id)) == counts[adapter_id]:
                continue
            with store.read() as s:
                evals = [
                    Evaluation(datanet=r.datanet, snapshot=r.snapshot, examples=r.examples, metrics=r.metrics,
                               ledger_seq=r.ledger_seq)
                    for r in s.execute(select(EvalRow).where(EvalRow.adapter_id == adapter_id).order_by(EvalRow.id))
                    .scalars()
                ]  # fmt: skip
            write_evaluations(directory, AdapterEvaluations(adapter_hash=adapter_id, evaluations=evals))
            manifest = read_adapter_manifest(directory)
            if manifest is not None:
                write_text_atomic(directory / CARD_NAME, model_card(manifest, evals))
        except (OSError, ValueError, TallyError) as exc:
            report.leftovers.append(f"{directory}: its evaluations.json could not be brought up to date ({exc})")
            continue
        report.refreshed.append(str(directory))


def recover(settings: Settings, store: Store) -> RecoveryReport:
    report = RecoveryReport()
    report.failed_jobs = reap(store)
    with publish_lock(settings):
        _pending_publications(settings, store, report)
        for root in _roots(settings):
            if not root.is_dir():
                continue
            for manifest in sorted(root.rglob(MANIFEST_NAME)):
                directory = manifest.parent
                if not any(part.startswith(".") for part in directory.relative_to(root).parts):
                    _roll_back(settings, store, directory, report)
    _evaluations(store, report)
    for root in _roots(settings):
        if root.is_dir():
            for stage in sorted(root.rglob(f".*{PARTIAL}")):
                if stage.is_dir():
                    _staging(settings, store, stage, report)
    now = time.time()
    for tmp in settings.data_dir.glob(".adapters-*.json"):  # the registry's own temporary files
        try:
            if now - tmp.stat().st_mtime > TEMP_AGE_S:
                tmp.unlink()
                report.removed.append(str(tmp))
        except OSError:
            continue
    for line in report.lines():
        log.warning("recovery: %s", line)
    return report
