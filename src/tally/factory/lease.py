"""Job state in the database: queue, claim with a lease, heartbeat, cancel, finish; shared by every process.

A job row is the one truth about a job, whichever process runs it. A worker claims a queued row with a
conditional UPDATE (`... WHERE id = ? AND status = 'queued'`, or for a running row whose owner died, `AND
lease_owner = <the dead owner>`): the database lets exactly one claimer's UPDATE match, on SQLite (writers take
turns) and on PostgreSQL (the second UPDATE re-reads the row after the first commits, and no longer matches).
The owner then heartbeats; a row whose heartbeat is older than the lease, or whose owner process is known dead
(same machine: its pid is gone or belongs to a newer process), is claimed again and resumes from its checkpoint.

Cancelling sets a flag in the row; the owner reads it with each heartbeat and stops at the next training event.
`tally train` runs its job in its own process (`runner = 'local'`): no worker ever takes such a row over, and
one whose process died is marked failed (its checkpoints stay for `tally train --resume`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tally.factory.tables import JobRow, PipelineRunRow
from tally.ledger.events import now_ts
from tally.store import Store

log = logging.getLogger(__name__)

HEARTBEAT_S = 5.0  # how often an owner writes its heartbeat (and reads the cancel flag)
LEASE_S = 60.0  # a heartbeat older than this and the job is another worker's to take
MAX_ATTEMPTS = 5  # default of factory.max_job_attempts: a job whose owner died this often is failed
ACTIVE = ("queued", "running")
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class JobStopped(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """Stop the job now. A BaseException, so that no `except Exception` on the way (a pipeline's retry of a failed
    step, a listener guard) mistakes it for a failure to record."""


class JobCancelled(JobStopped):
    """Someone asked to cancel the job (the API, the CLI)."""


class JobPaused(JobStopped):
    """The process is stopping: the job ended at a checkpoint and goes back to the queue."""


class LeaseLost(JobStopped):
    """Another worker took the job over (this one was silent longer than the lease): stop writing at once."""


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), to tell a pid from a newer process with it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def _machine() -> str:
    """This machine and pid namespace: where a pid means the same process (containers share a kernel's boot id)."""
    boot = ""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def owner_id() -> str:
    """Who holds a lease: machine, pid namespace, pid, the process's start time and a random part."""
    pid = os.getpid()
    return f"{_machine()}|{pid}|{_proc_start(pid)}|{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None) -> bool:
    """False only when the owner is known dead: it ran on this machine and its process is gone (or is a zombie,
    or its pid now belongs to a later process). An owner elsewhere counts as alive: its heartbeat decides."""
    if not owner:
        return False
    parts = owner.split("|")
    if len(parts) != 4 or parts[0] != _machine() or not parts[1].isdigit():
        return True
    pid = int(parts[1])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z" and (not parts[2] or _proc_start(pid) == parts[2])


def _stale(row: Any, now: float, lease_s: float) -> bool:
    return row.heartbeat_at is None or row.heartbeat_at < now - lease_s or not owner_alive(row.lease_owner)


def insert_job(session: Session, row: JobRow) -> JobRow:
    session.add(row)
    session.flush()
    return row


def claim(
    store: Store,
    owner: str,
    *,
    lease_s: float = LEASE_S,
    kinds: tuple[str, ...] = ("train", "pipeline"),
    max_attempts: int = MAX_ATTEMPTS,
) -> JobRow | None:
    """Take the oldest queued job, or a running one whose owner died, for `owner`; None when there is none.

    A dead owner's job that was asked to cancel is cancelled instead; one that died `max_attempts` times fails."""
    now = time.time()
    with store.transaction() as s:
        candidates = s.execute(
            select(JobRow.id, JobRow.status, JobRow.lease_owner, JobRow.heartbeat_at, JobRow.attempts,
                   JobRow.cancel_requested)
            .where(JobRow.runner == "worker", JobRow.kind.in_(kinds), JobRow.status.in_(ACTIVE))
            .order_by(JobRow.created_at, JobRow.id)
            .limit(100)
        ).all()  # fmt: skip
        for c in candidates:
            if c.status == "running" and not _stale(c, now, lease_s):
                continue
            same = [JobRow.id == c.id, JobRow.status == c.status]
            same.append(JobRow.lease_owner.is_(None) if c.lease_owner is None else JobRow.lease_owner == c.lease_owner)
            if c.status == "running" and (c.cancel_requested or c.attempts >= max_attempts):
                status, error = ("cancelled", None) if c.cancel_requested else (
                    "failed", f"interrupted {c.attempts} times (its worker stopped each time); not retried again"
                )  # fmt: skip
                s.execute(update(JobRow).where(*same).values(status=status, error=error, finished_at=now_ts()))
                continue
            taken = s.execute(
                update(JobRow).where(*same).values(
                    status="running", lease_owner=owner, heartbeat_at=now, attempts=JobRow.attempts + 1,
                    started_at=JobRow.started_at if c.status == "running" else now_ts(),
                )
            )  # fmt: skip
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                row = s.get(JobRow, c.id, populate_existing=True)
                assert row is not None
                s.expunge(row)
                return row
    return None


def heartbeat(store: Store, job_id: str, owner: str, progress: dict[str, Any] | None = None) -> tuple[bool, bool]:
    """Renew the lease (and store the latest progress); returns (still ours, cancel requested)."""
    values: dict[str, Any] = {"heartbeat_at": time.time()}
    if progress is not None:
        values["progress"] = progress
    with store.transaction() as s:
        done = s.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.lease_owner == owner, JobRow.status == "running")
            .values(**values)
        )  # fmt: skip
        cancel = s.execute(select(JobRow.cancel_requested).where(JobRow.id == job_id)).scalar()
    return done.rowcount == 1, bool(cancel)  # type: ignore[attr-defined]


def finish(store: Store, job_id: str, owner: str, status: str, **fields: Any) -> bool:
    """Record the job's end, if the lease is still `owner`'s; returns whether it was."""
    with store.transaction() as s:
        done = s.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.lease_owner == owner)
            .values(status=status, finished_at=now_ts(), **fields)
        )  # fmt: skip
    return done.rowcount == 1  # type: ignore[attr-defined]


def release(store: Store, job_id: str, owner: str) -> bool:
    """Put a running job back in the queue (its worker is stopping; the next one resumes from the checkpoint).
    The attempt does not count towards `max_attempts`: the worker stopped cleanly."""
    with store.transaction() as s:
        done = s.execute(
            update(JobRow).where(JobRow.id == job_id, JobRow.lease_owner == owner, JobRow.status == "running")
            .values(status="queued", lease_owner=None, heartbeat_at=None, attempts=JobRow.attempts - 1)
        )  # fmt: skip
    return done.rowcount == 1  # type: ignore[attr-defined]


def request_cancel(store: Store, job_id: str, *, lease_s: float = LEASE_S) -> None:
    """Ask the job to stop: a queued one is cancelled now, a running one by its owner at its next training event,
    and a running one whose owner is dead (nobody would read the flag) is cancelled now too."""
    now = time.time()
    with store.transaction() as s:
        row = s.get(JobRow, job_id)
        if row is None or row.status in TERMINAL:
            return
        row.cancel_requested = 1
        if row.status == "queued" or _stale(row, now, lease_s):
            row.status, row.finished_at = "cancelled", now_ts()
            _end_pipeline_run(s, row, "cancelled", "cancelled")


def reap(store: Store, *, lease_s: float = LEASE_S) -> list[str]:
    """Fail the local jobs (`tally train`, `tally pipeline run`) whose process died; returns their ids."""
    now = time.time()
    reaped = []
    with store.transaction() as s:
        rows = s.execute(select(JobRow).where(JobRow.runner == "local", JobRow.status == "running")).scalars()
        for row in rows:
            if not _stale(row, now, lease_s):
                continue
            row.status, row.finished_at = "failed", now_ts()
            row.error = "interrupted: the process that ran it stopped" + (
                "; `tally train --resume` continues from its last checkpoint" if row.kind == "train" else
                "; running the pipeline again reuses its finished steps and resumes its training"
            )  # fmt: skip
            _end_pipeline_run(s, row, "failed", "interrupted: the process that ran it stopped")
            reaped.append(row.id)
    return reaped


def _end_pipeline_run(session: Session, row: JobRow, status: str, error: str) -> None:
    run_id = (row.payload or {}).get("run_id")
    run = session.get(PipelineRunRow, run_id) if run_id else None
    if run is not None and run.status == "running":
        run.status, run.error, run.finished_at = status, error, now_ts()


class Lease:
    """A running job's link to its row: a heartbeat thread that renews the lease, stores progress and reads the
    cancel flag; `check()` (called at every training event) raises when the job must stop."""

    def __init__(
        self, store: Store, job_id: str, owner: str, *, heartbeat_s: float = HEARTBEAT_S,
        stopping: threading.Event | None = None, local: bool = False,
    ) -> None:  # fmt: skip
        self.store, self.job_id, self.owner, self.heartbeat_s = store, job_id, owner, heartbeat_s
        self.stopping = stopping or threading.Event()  # set when the process is shutting down (pause, not cancel)
        self.local = local  # a local job keeps running if the reaper failed it while it was silent
        self.cancelled, self.lost = threading.Event(), threading.Event()
        self._progress: dict[str, Any] | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"tally-lease-{job_id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join(timeout=self.heartbeat_s + 5)

    def _beat(self) -> None:
        while not self._done.wait(self.heartbeat_s):
            self.beat()

    @property
    def progress(self) -> dict[str, Any] | None:
        return self._progress

    def beat(self) -> None:
        try:
            ours, cancel = heartbeat(self.store, self.job_id, self.owner, self._progress)
        except Exception as exc:  # a database hiccup: the next beat tries again, the lease has slack for it
            log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            return
        if cancel:
            self.cancelled.set()
        if not ours and not self.local:
            self.lost.set()

    def check(self) -> None:
        if self.cancelled.is_set():
            raise JobCancelled(self.job_id)
        if self.lost.is_set():
            raise LeaseLost(self.job_id)

    def should_pause(self) -> bool:
        """The process is stopping: end the training at this step, with a checkpoint, and give the job back."""
        return self.stopping.is_set()

    def listener(self, event: dict[str, Any]) -> None:
        """A training-log listener: keeps the latest progress for the next heartbeat, then `check()`.
        Progress: the phase (`training`, `index`), the last step's numbers, and the index pass's rows done."""
        kind = event.get("type")
        if kind in ("train", "resumed"):
            keep = ("step", "total_steps", "epoch", "loss", "lr", "tokens", "tokens_per_s", "eta_s")
            self._progress = {**(self._progress or {}), "phase": "training",
                              **{k: event[k] for k in keep if k in event}}  # fmt: skip
        elif kind == "index":
            self._progress = {**(self._progress or {}), "phase": "index", "index_done": event.get("done"),
                              "index_total": event.get("total")}  # fmt: skip
        self.check()


def local_job(
    store: Store, *, kind: str, created_by: str, config: dict[str, Any], output_dir: str,
    payload: dict[str, Any] | None = None, conflict: Callable[[Session], None] | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Lease:  # fmt: skip
    """Insert a running job row owned by this process (`tally train`, `tally pipeline run`) and return its lease
    (a context manager: enter it to start the heartbeat). `conflict(session)` may refuse inside the insert's
    transaction."""
    owner = owner_id()
    job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
    reap(store)
    with store.transaction() as s:
        if conflict is not None:
            conflict(s)
        insert_job(s, JobRow(
            id=job_id, status="running", config=config, created_by=created_by, created_at=now_ts(),
            started_at=now_ts(), output_dir=output_dir, kind=kind, runner="local", payload=payload,
            lease_owner=owner, heartbeat_at=time.time(), attempts=1, cancel_requested=0,
        ))  # fmt: skip
    return Lease(store, job_id, owner, heartbeat_s=heartbeat_s, local=True)
