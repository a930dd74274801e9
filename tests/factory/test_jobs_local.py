"""Every training is a job row: `tally train` records its own (and can be cancelled from the API), a pipeline run
queued for a worker runs there, and one stopped in the middle resumes under the same run id."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.datanets.conftest import World
from tests.factory.conftest import make_config

from tally.api import create_app
from tally.factory import publication, service, trainer
from tally.factory.errors import FactoryError
from tally.factory.jobs import JobQueue
from tally.factory.pipeline import pipeline_status, run_pipeline, submit_pipeline
from tally.factory.pipeline_spec import load_pipeline
from tally.factory.tables import JobRow, PipelineRunRow, PipelineStepRow, PublicationRow
from tally.factory.worker import Worker
from tally.identity import create_api_key, get_account
from tally.ledger.events import decode_entry


def _jobs(w: World) -> list[JobRow]:
    with w.ledger.store.read() as s:
        rows = list(s.execute(select(JobRow).order_by(JobRow.created_at)).scalars())
        for r in rows:
            s.expunge(r)
        return rows


def test_tally_train_records_its_job_and_the_api_shows_it(people: World, tiny_model: Path, tmp_path: Path) -> None:
    w = people
    result = service.train(w.settings, w.ledger, w.dev, make_config(tiny_model, tmp_path / "out"))
    [job] = _jobs(w)
    assert (job.status, job.runner, job.kind, job.adapter_id) == ("succeeded", "local", "train", result.adapter_hash)
    assert job.progress is not None and job.progress["step"] == job.progress["total_steps"]
    with w.tx() as s:
        account = get_account(s, w.dev.address)
        assert account is not None
        _, token = create_api_key(s, w.ledger, account)
    with TestClient(create_app(w.settings)) as c:
        listed = c.get("/v1/fine_tuning/jobs", headers={"Authorization": f"Bearer {token}"}).json()["data"]
    assert [(j["id"], j["status"], j["adapter_hash"]) for j in listed] == [(job.id, "succeeded", result.adapter_hash)]


def test_the_api_cancels_a_training_that_tally_train_runs(people: World, tiny_model: Path, tmp_path: Path) -> None:
    w = people
    queue = JobQueue(w.settings, w.ledger)  # the API's side, with its own view of the database

    def cancel_at_step_3(event: dict[str, Any]) -> None:
        if event["type"] == "train" and event["step"] == 3:
            [job] = _jobs(w)
            queue.cancel(job.id)
            time.sleep(0.5)  # the heartbeat (every 5 s) need not have passed: the next check reads the flag

    cfg = make_config(tiny_model, tmp_path / "out", train={"epochs": 20, "batch_size": 1})
    lease_beat = service.local_job  # heartbeat faster so the flag is seen within the test's patience
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service, "local_job", lambda *a, **k: lease_beat(*a, **{**k, "heartbeat_s": 0.1}))
        with pytest.raises(FactoryError, match="training cancelled"):
            service.train(w.settings, w.ledger, w.dev, cfg, listeners=[cancel_at_step_3])
    [job] = _jobs(w)
    assert job.status == "cancelled" and job.cancel_requested == 1 and job.adapter_id is None
    assert job.progress is not None and 3 <= job.progress["step"] < 30


def test_a_queued_pipeline_runs_in_a_worker_and_resumes_after_a_stop(
    people: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    w = people
    train = {
        "model": {"name": str(tiny_model)}, "method": {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
        "data": {"max_length": 64}, "train": {"epochs": 4, "batch_size": 1, "save_steps": 2},
        "influence": {"dims": 16},
    }  # fmt: skip
    (tmp_path / "train.yaml").write_text(yaml.safe_dump(train))
    spec_file = tmp_path / "pipeline.yaml"
    spec_file.write_text(yaml.safe_dump({"name": "people", "steps": {
        "snap": {"kind": "snapshot", "datanet": "people"},
        "train": {"kind": "train", "needs": ["snap"], "config": "train.yaml"},
    }}))  # fmt: skip
    spec, base = load_pipeline(spec_file)
    step = trainer.Loop._step

    def slowed(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.05)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(trainer.Loop, "_step", slowed)
    queued = submit_pipeline(w.settings, w.ledger, w.owner, spec, base)
    stopping = threading.Event()
    worker = Worker(w.settings, poll_s=0.05, heartbeat_s=0.1, stopping=stopping)
    thread = threading.Thread(target=worker.run, kwargs={"max_jobs": 1})
    thread.start()
    out = w.settings.data_dir / "pipelines" / "people" / "train"
    deadline = time.monotonic() + 120
    while not list(out.glob("*/checkpoints/step-*")) and not list(out.glob(".*.partial/checkpoints/step-*")):
        assert time.monotonic() < deadline and thread.is_alive(), "the train step never checkpointed"
        time.sleep(0.05)
    stopping.set()  # what SIGTERM does to a worker process
    thread.join(timeout=60)
    [job] = _jobs(w)
    assert (job.status, job.kind, job.lease_owner) == ("queued", "pipeline", None)
    with w.ledger.store.read() as s:
        run = s.get(PipelineRunRow, queued["run"])
        assert run is not None and run.status == "running"
        snap = s.get(PipelineStepRow, (queued["run"], "snap"))
        assert snap is not None and snap.status == "succeeded"

    with caplog.at_level(logging.WARNING, logger="tally.factory.recovery"):
        assert Worker(w.settings, poll_s=0.05, heartbeat_s=0.1).run(until_idle=True) == 1
    assert "left alone" not in caplog.text  # the queued run owns its step's staging directory
    [job] = _jobs(w)
    assert job.status == "succeeded", job.error
    [run_status] = pipeline_status(w.ledger, "people")
    assert run_status["run"] == queued["run"] and run_status["status"] == "succeeded"
    assert {s["name"]: (s["status"], s["attempts"]) for s in run_status["steps"]} == {
        "snap": ("succeeded", 1), "train": ("succeeded", 2),  # the snapshot step was not run again; the train
    }  # fmt: skip  # step's stopped attempt counts
    [adapter_dir] = [p for p in out.iterdir() if not p.name.startswith(".")]
    log = (adapter_dir / "trainer_log.jsonl").read_text()
    assert '"type": "resumed"' in log  # the train step continued from its checkpoint
    again = submit_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert Worker(w.settings, poll_s=0.05).run(until_idle=True) == 1
    [latest, _] = pipeline_status(w.ledger, "people")
    assert latest["run"] == again["run"] and {s["status"] for s in latest["steps"]} == {"cached"}


def _interrupt_after_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process dies right after the adapter's transaction commits (SystemExit: no handler on the way cleans up
    for it, as none would after a SIGKILL)."""

    def die(step: str) -> None:
        if step == "committed":
            raise SystemExit("killed after the commit")

    monkeypatch.setattr(publication, "crash_point", die)


def _trained_entries(w: World, name: str) -> list[str]:
    entries = [decode_entry(w.ledger.entry(i)) for i in range(w.ledger.size())]
    trained = [e for e in entries if e.type == "factory.adapter_trained"]
    return [e.payload["adapter_hash"] for e in trained if e.payload["adapter"] == name]


def test_a_job_killed_after_its_commit_ends_succeeded_when_taken_over(
    people: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = people
    cfg = make_config(tiny_model, tmp_path / "unused", output={"name": "people-late", "publish": True})
    cfg = cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": None})})
    job = JobQueue(w.settings, w.ledger).submit(w.dev, cfg)
    _interrupt_after_commit(monkeypatch)
    with pytest.raises(SystemExit):
        Worker(w.settings, poll_s=0.05).run(until_idle=True)
    monkeypatch.undo()
    [row] = _jobs(w)
    assert row.status == "running" and row.adapter_id is None  # committed, but nobody said so
    time.sleep(1.0)
    assert Worker(w.settings, poll_s=0.05, lease_s=0.5).run(until_idle=True) == 1  # its lease lapsed: taken over
    [row] = _jobs(w)
    assert row.status == "succeeded" and row.attempts == 2, row.error
    assert _trained_entries(w, "people-late") == [row.adapter_id]  # the same adapter, recorded once
    with w.ledger.store.read() as s:
        assert [p.state for p in s.execute(select(PublicationRow)).scalars()] == ["registered"]  # recovery wrote it
    assert job["id"] == row.id


def test_a_pipeline_train_step_killed_after_its_commit_is_not_trained_twice(
    people: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = people
    train = {
        "model": {"name": str(tiny_model)}, "method": {"rank": 2, "alpha": 4, "targets": ["q_proj"]},
        "data": {"max_length": 64}, "train": {"epochs": 1, "batch_size": 4}, "influence": {"dims": 16},
    }  # fmt: skip
    steps = {
        "snap": {"kind": "snapshot", "datanet": "people"},
        "train": {"kind": "train", "needs": ["snap"], "config": train},
    }
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"name": "late", "steps": steps}))
    spec, base = load_pipeline(tmp_path / "p.yaml")
    _interrupt_after_commit(monkeypatch)
    with pytest.raises(SystemExit):
        run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    monkeypatch.undo()
    again = run_pipeline(w.settings, w.ledger, w.owner, spec, base)
    assert again["steps"] == {"snap": "cached", "train": "succeeded"}
    assert _trained_entries(w, "late-train") == [again["outputs"]["train"]["adapter_hash"]]
