"""Worker processes: claim queued jobs from the database and run them (training, pipelines), outside the API.

`tally worker` runs one in the foreground; `tally serve` starts `factory.workers` of them as child processes
(`WorkerPool`) and stops them when it stops. Each worker:

- at start, settles what a crash left (`tally.factory.recovery`);
- claims one job at a time (`tally.factory.lease.claim`), heartbeats while it runs, reads the cancel flag;
- on SIGTERM or SIGINT (or when the `tally serve` that started it is gone) ends the training at the next step
  with a checkpoint and puts the job back in the queue, so the next worker resumes it exactly;
- a worker killed outright (SIGKILL, power loss) leaves its job `running` with a heartbeat that stops: another
  worker takes it over once the lease runs out (at once when the dead worker was on the same machine) and resumes
  from the last checkpoint. Training resumes bit-identically, so the job ends with the adapter id it would have had.

Torch is imported only when a job arrives, so an idle worker is a small process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tally.config import Settings
from tally.factory.lease import (
    HEARTBEAT_S,
    LEASE_S,
    JobCancelled,
    JobPaused,
    Lease,
    LeaseLost,
    claim,
    finish,
    owner_id,
    reap,
    release,
)
from tally.factory.publication import StagingBusy, staging_dir
from tally.factory.recovery import recover
from tally.factory.tables import JobRow
from tally.identity import Principal
from tally.ledger import Ledger, open_ledger
from tally.store import Store, open_store

log = logging.getLogger("tally.factory.worker")  # the same name when run as `python -m`

REAP_EVERY_S = 30.0
BUSY_BACKOFF_S = 5.0


def _principal(store: Store, row: JobRow) -> Principal:
    """Who the job trains as: as submitted (the key's roles), or for a row without that record, the account."""
    saved = (row.payload or {}).get("principal")
    if saved:
        return Principal(saved["address"], saved["name"], frozenset(saved["roles"]), saved.get("key_id"))
    from tally.identity.accounts import get_account

    with store.read() as s:
        account = get_account(s, row.created_by)
    if account is None:
        raise RuntimeError(f"job {row.id}: its account {row.created_by} no longer exists")
    return Principal.of(account)


def _recover(settings: Settings, store: Store) -> None:
    """Settle what a crash left; a failure to (a directory it may not read) is logged, and jobs still run."""
    try:
        recover(settings, store)
    except Exception:
        log.exception("recovery at start failed; jobs run regardless")


class Worker:
    """One worker: claims and runs jobs until `stopping` is set (or, with `until_idle`, the queue is empty)."""

    def __init__(
        self, settings: Settings, *, poll_s: float = 1.0, lease_s: float = LEASE_S, heartbeat_s: float = HEARTBEAT_S,
        stopping: threading.Event | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.poll_s, self.lease_s, self.heartbeat_s = settings, poll_s, lease_s, heartbeat_s
        self.stopping = stopping or threading.Event()
        self.owner = owner_id()
        self.store: Store | None = None
        self.ledger: Ledger | None = None

    def run(self, *, until_idle: bool = False, max_jobs: int | None = None) -> int:
        """The loop; returns the number of jobs it ran."""
        self.store = open_store(self.settings)
        self.ledger = open_ledger(self.settings, self.store)
        ran, last_reap = 0, time.monotonic()
        try:
            _recover(self.settings, self.store)
            while not self.stopping.is_set():
                row = claim(
                    self.store, self.owner, lease_s=self.lease_s,
                    max_attempts=self.settings.factory.max_job_attempts,
                )  # fmt: skip
                if row is None:
                    if until_idle:
                        break
                    if time.monotonic() - last_reap > REAP_EVERY_S:
                        reap(self.store, lease_s=self.lease_s)
                        last_reap = time.monotonic()
                    self.stopping.wait(self.poll_s)
                    continue
                self.run_job(row)
                ran += 1
                if max_jobs is not None and ran >= max_jobs:
                    break
        finally:
            self.store.dispose()
        return ran

    def run_job(self, row: JobRow) -> None:
        assert self.store is not None and self.ledger is not None
        log.info("job %s (%s): claimed, attempt %d", row.id, row.kind, row.attempts)
        store, owner = self.store, self.owner
        with Lease(store, row.id, owner, heartbeat_s=self.heartbeat_s, stopping=self.stopping) as lease:
            try:
                fields = self._pipeline(row, lease) if row.kind == "pipeline" else self._train(row, lease)
            except JobCancelled:
                finish(store, row.id, owner, "cancelled", progress=lease.progress)
                self._cancelled(row)
                log.info("job %s: cancelled", row.id)
                return
            except JobPaused:
                release(store, row.id, owner)
                log.info("job %s: paused at a checkpoint, back in the queue", row.id)
                return
            except LeaseLost:
                log.warning("job %s: another worker took it over; this one stopped", row.id)
                return
            except StagingBusy as exc:
                release(store, row.id, owner)
                log.warning("job %s: %s; back in the queue", row.id, exc)
                self.stopping.wait(BUSY_BACKOFF_S)
                return
            except Exception as exc:  # the job records any failure; the worker carries on
                log.exception("job %s failed", row.id)
                finish(store, row.id, owner, "failed", error=f"{type(exc).__name__}: {exc}", progress=lease.progress)
                return
            finish(store, row.id, owner, fields.pop("status", "succeeded"), progress=lease.progress, **fields)
            log.info("job %s: finished", row.id)

    def _train(self, row: JobRow, lease: Lease) -> dict[str, Any]:
        from tally.factory import service
        from tally.factory.config import parse_config

        assert self.store is not None and self.ledger is not None
        cfg = parse_config(row.config, "job config")
        limits = self.settings.factory if (row.payload or {}).get("limits", True) else None
        principal = _principal(self.store, row)
        result = service.already_trained(self.settings, self.ledger, principal, cfg, job_id=row.id) or service.train(
            self.settings, self.ledger, principal, cfg, resume=True, limits=limits, job=lease, job_id=row.id
        )
        if not result.finished:
            raise JobPaused(row.id)
        metrics = result.manifest.metrics.model_dump() if result.manifest else None
        return {"adapter_id": result.adapter_hash, "metrics": metrics, "error": None}

    def _pipeline(self, row: JobRow, lease: Lease) -> dict[str, Any]:
        from tally.factory.pipeline import run_pipeline
        from tally.factory.pipeline_spec import PipelineSpec

        assert self.store is not None and self.ledger is not None
        payload = row.payload or {}
        spec = PipelineSpec.model_validate(row.config)
        result = run_pipeline(
            self.settings, self.ledger, _principal(self.store, row), spec, Path(payload["base_dir"]),
            trigger=payload.get("trigger", "queued"), run_id=payload["run_id"], job=lease,
        )  # fmt: skip
        failed = sorted(n for n, s in result["steps"].items() if s == "failed")
        error = f"steps failed: {', '.join(failed)}" if failed else None
        return {"status": result["status"], "error": error, "metrics": {"steps": result["steps"]}}

    def _cancelled(self, row: JobRow) -> None:
        """A cancelled training is not resumed: its checkpoints go (its log stays, for its events)."""
        if row.kind == "train":
            import shutil

            shutil.rmtree(staging_dir(Path(row.output_dir)) / "checkpoints", ignore_errors=True)


def run_worker(
    settings: Settings, *, until_idle: bool = False, poll_s: float = 1.0, parent: int | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> int:  # fmt: skip
    """Run a worker in this process until SIGTERM/SIGINT (or the parent process `parent` is gone); a signal ends
    the job in progress at its next training step with a checkpoint and gives it back to the queue."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("worker: signal %d, stopping after a checkpoint", signum)
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    if parent is not None:

        def watch_parent() -> None:
            while not stopping.wait(0.2):  # a cheap check; the sooner it notices, the less it trains for nobody
                if os.getppid() != parent:
                    log.warning("worker: the server that started it is gone; stopping")
                    stopping.set()

        threading.Thread(target=watch_parent, name="tally-worker-parent", daemon=True).start()
    try:
        return Worker(settings, poll_s=poll_s, heartbeat_s=heartbeat_s, stopping=stopping).run(until_idle=until_idle)
    finally:
        stopping.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WorkerPool:
    """`count` worker processes started by the server, restarted if one dies, stopped (gracefully, then killed)
    with it. Settings go to each child whole on its stdin (not the command line: they may hold a database
    password)."""

    def __init__(self, settings: Settings, count: int, *, stop_timeout_s: float = 60.0, restart_after_s: float = 5.0):
        self.settings, self.count = settings, count
        self.stop_timeout_s, self.restart_after_s = stop_timeout_s, restart_after_s
        self.procs: list[subprocess.Popen[bytes]] = []
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._supervisor: threading.Thread | None = None

    def _spawn(self) -> subprocess.Popen[bytes]:
        entry = "import sys; from tally.factory.worker import main; sys.exit(main(sys.argv[1:]))"
        cmd = [sys.executable, "-c", entry, "--settings-stdin", "--parent", str(os.getpid())]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self.settings.model_dump(mode="json")).encode())
        proc.stdin.close()
        log.info("worker started (pid %d)", proc.pid)
        return proc

    def start(self) -> WorkerPool:
        if self.count <= 0:
            return self
        store = open_store(self.settings)
        try:
            _recover(self.settings, store)
        finally:
            store.dispose()
        with self._lock:
            self.procs = [self._spawn() for _ in range(self.count)]
        self._supervisor = threading.Thread(target=self._supervise, name="tally-worker-pool", daemon=True)
        self._supervisor.start()
        return self

    def _supervise(self) -> None:
        while not self.stopping.wait(1.0):
            with self._lock:
                dead = [i for i, proc in enumerate(self.procs) if proc.poll() is not None]
            if not dead:
                continue
            for i in dead:
                proc = self.procs[i]
                log.warning("worker (pid %d) exited with %s; starting another", proc.pid, proc.returncode)
            if self.stopping.wait(self.restart_after_s):
                return
            with self._lock:
                for i in dead:
                    self.procs[i] = self._spawn()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.procs]

    def stop(self) -> None:
        """SIGTERM every worker (each checkpoints and gives its job back), wait, then SIGKILL what is left."""
        self.stopping.set()
        with self._lock:
            procs = list(self.procs)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker (pid %d) did not stop in %.0f s; killed", proc.pid, self.stop_timeout_s)
                proc.kill()
                proc.wait()
        if self._supervisor is not None:
            self._supervisor.join(timeout=5)
        if procs:
            log.info("workers stopped: %s", ", ".join(f"pid {p.pid} exit {p.returncode}" for p in procs))


def main(argv: list[str] | None = None) -> int:
    """`python -m tally.factory.worker`: what `WorkerPool` starts (`tally worker` is the command for people)."""
    parser = argparse.ArgumentParser(prog="python -m tally.factory.worker")
    parser.add_argument("--settings-stdin", action="store_true", help="read the settings as JSON from stdin")
    parser.add_argument("--parent", type=int, default=None, help="stop when this process is no longer the parent")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks at an empty queue")
    parser.add_argument("--until-idle", action="store_true", help="exit when the queue is empty")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_S, help="seconds between heartbeats")
    args = parser.parse_args(argv)
    from tally.config import load_settings
    from tally.config.logs import configure_logging

    settings = Settings(**json.loads(sys.stdin.read())) if args.settings_stdin else load_settings()
    configure_logging(settings.log.level, settings.log.format)
    run_worker(settings, until_idle=args.until_idle, poll_s=args.poll, parent=args.parent, heartbeat_s=args.heartbeat)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
