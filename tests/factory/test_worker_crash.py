"""Jobs in worker processes: a worker SIGKILLed mid-training, and another stopped with SIGTERM, and the job still ends
with the adapter id an uninterrupted run gives; cancelling from another process; the API reads a worker's events."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from tests.datanets.conftest import World

from tally.config import Settings
from tally.factory.config import TrainConfig, parse_config
from tally.factory.jobs import JobQueue, job_events
from tally.factory.publication import staging_dir
from tally.factory.tables import JobRow
from tally.factory.trainlog import LOG_NAME, read_log

# A worker process as `tally serve` starts one, each training step slowed down so a test can stop it mid-run.
SLOW_WORKER = """
import sys, time
from tally.factory import trainer
delay = float(sys.argv[1])
step = trainer.Loop._step
def slowed(self, *args, **kwargs):
    time.sleep(delay)
    return step(self, *args, **kwargs)
trainer.Loop._step = slowed
from tally.factory.worker import main
raise SystemExit(main(["--settings-stdin", "--poll", "0.1", "--heartbeat", "0.2", *sys.argv[2:]]))
"""


class Workers:
    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings, self.logs = settings, logs
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[IO[bytes]] = []

    def start(self, delay: float, *extra: str) -> subprocess.Popen[bytes]:
        out = (self.logs / f"worker-{len(self.procs)}.log").open("wb")
        self.files.append(out)
        cmd = [sys.executable, "-c", SLOW_WORKER, str(delay), *extra]
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT)
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(self.settings.model_dump(mode="json")).encode())
        proc.stdin.close()
        self.procs.append(proc)
        return proc

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-3000:] for p in sorted(self.logs.glob("worker-*.log")))

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for f in self.files:
            f.close()


@pytest.fixture
def workers(people: World, tiny_model: Path, tmp_path: Path) -> Iterator[Workers]:
    people.settings.models.default = str(tiny_model)
    pool = Workers(people.settings, tmp_path)
    yield pool
    pool.close()


def _config(tiny_model: Path, name: str, **train: Any) -> TrainConfig:
    return parse_config({
        "model": {"name": str(tiny_model)},
        "method": {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 64},
        "train": {"epochs": 6, "batch_size": 1, "lr": 1e-2, "seed": 3, "save_steps": 4, **train},
        "influence": {"dims": 16},
        "output": {"name": name},
    })  # fmt: skip


def _row(w: World, job_id: str) -> JobRow:
    with w.ledger.store.read() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        s.expunge(row)
        return row


def _wait(what: str, ok: Callable[[], bool], workers: Workers, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{workers.output()}"
        time.sleep(0.05)


def _log(w: World, name: str) -> list[dict[str, Any]]:
    final = w.settings.data_dir / "adapters" / w.dev.address.lower() / name
    where = final if (final / LOG_NAME).is_file() else staging_dir(final)
    return read_log(where / LOG_NAME)


def _checkpointed(w: World, name: str, at_least: int) -> bool:
    return any(e["type"] == "checkpoint" and e["step"] >= at_least for e in _log(w, name))


def test_a_killed_worker_s_job_resumes_in_the_next_and_ends_with_the_same_adapter(
    people: World, tiny_model: Path, workers: Workers
) -> None:
    w = people
    queue = JobQueue(w.settings, w.ledger)
    ref = queue.submit(w.dev, _config(tiny_model, "people-ref"))
    job = queue.submit(w.dev, _config(tiny_model, "people-crash"))
    first = workers.start(0.05)
    _wait("the reference job", lambda: _row(w, ref["id"]).status == "succeeded", workers)
    _wait("a checkpoint at step 8", lambda: _checkpointed(w, "people-crash", 8), workers)
    live = job_events(_row(w, job["id"]))  # the API reads the events of a job another process runs
    assert any(e["type"] == "metrics" for e in live)
    _wait("progress in the row", lambda: (_row(w, job["id"]).progress or {}).get("step", 0) >= 8, workers)
    first.send_signal(signal.SIGKILL)
    first.wait()
    row = _row(w, job["id"])
    assert row.status == "running" and row.attempts == 1  # nobody told the database: the lease says who died
    killed_at = max(e["step"] for e in _log(w, "people-crash") if e["type"] == "train")

    second = workers.start(0.05)  # takes the job over at once: its owner is known dead on this machine
    _wait("the resumed job to pass its first run", lambda: _checkpointed(w, "people-crash", killed_at + 4), workers)
    second.send_signal(signal.SIGTERM)  # a clean stop: a checkpoint at this step, the job back in the queue
    assert second.wait(timeout=60) == 0, workers.output()
    row = _row(w, job["id"])
    assert (row.status, row.lease_owner) == ("queued", None), workers.output()
    assert _log(w, "people-crash")[-1]["type"] == "paused"

    third = workers.start(0.0, "--until-idle")
    assert third.wait(timeout=180) == 0, workers.output()
    done, reference = _row(w, job["id"]), _row(w, ref["id"])
    assert done.status == "succeeded", (done.error, workers.output())
    assert done.adapter_id == reference.adapter_id is not None  # the same weights and config, bit for bit
    assert done.attempts == 2  # one crash counted; the clean stop did not
    log = _log(w, "people-crash")
    resumed = [e["step"] for e in log if e["type"] == "resumed"]
    assert len(resumed) == 2 and 8 <= resumed[0] <= killed_at and resumed[1] > resumed[0], resumed
    steps = [e["step"] for e in log if e["type"] == "train"]
    assert steps == list(range(1, steps[-1] + 1))  # the log reads like an uninterrupted run's
    adapters = w.settings.data_dir / "adapters" / w.dev.address.lower()
    index = "influence/index.safetensors"  # the per-epoch gradients too, captured across three processes
    assert (adapters / "people-crash" / index).read_bytes() == (adapters / "people-ref" / index).read_bytes()
    assert done.metrics is not None and reference.metrics is not None
    assert (done.metrics["steps"], done.metrics["tokens"]) == (reference.metrics["steps"], reference.metrics["tokens"])
    assert not staging_dir(adapters / "people-crash").exists()


def test_cancel_reaches_a_job_in_another_process(people: World, tiny_model: Path, workers: Workers) -> None:
    w = people
    queue = JobQueue(w.settings, w.ledger)
    job = queue.submit(w.dev, _config(tiny_model, "people-cancel", epochs=20))
    worker = workers.start(0.05)
    _wait("training to start", lambda: _checkpointed(w, "people-cancel", 4), workers)
    queue.cancel(job["id"])  # the API's process: a flag in the row
    _wait("the worker to cancel it", lambda: _row(w, job["id"]).status == "cancelled", workers, timeout=60)
    row = _row(w, job["id"])
    assert row.cancel_requested == 1 and row.adapter_id is None and row.finished_at is not None
    stage = staging_dir(w.settings.data_dir / "adapters" / w.dev.address.lower() / "people-cancel")
    assert not (stage / "checkpoints").exists() and job_events(row)  # no resume for it; its events stay readable
    assert worker.poll() is None  # the worker carries on, waiting for the next job
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
