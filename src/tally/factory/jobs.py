"""Fine-tuning jobs (OpenAI style): the API inserts a queued row; worker processes (`tally worker`, or those
`tally serve` starts) claim and run them (`tally.factory.worker`, `tally.factory.lease`).

The job's state (status, progress, error, the cancel flag) is its database row and its events are its
`trainer_log.jsonl`, so the API follows a job that another process runs, and a restart of either loses nothing
already written: a job whose worker died resumes from its last checkpoint in the next worker.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.factory.config import TrainConfig, parse_config
from tally.factory.data import resolve_sources
from tally.factory.errors import FactoryError
from tally.factory.guard import check_api_config, check_free, check_name, check_rows
from tally.factory.lease import TERMINAL, JobCancelled, insert_job, request_cancel
from tally.factory.recovery import RecoveryReport, recover
from tally.factory.service import check_not_training, output_dir, principal_payload, staging_dir
from tally.factory.tables import JobRow
from tally.factory.trainlog import LOG_NAME, read_log
from tally.factory.worker import WorkerPool, run_worker
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts

__all__ = [
    "TERMINAL", "JobCancelled", "JobQueue", "JobRow", "RecoveryReport", "WorkerPool", "admit", "config_from_request",
    "job_events", "job_object", "list_jobs", "recover", "run_worker", "visible_job",
]  # fmt: skip


def _epoch(ts: str | None) -> int | None:
    if ts is None:
        return None
    return int(datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp())


def config_from_request(body: dict[str, Any], settings: Settings) -> TrainConfig:
    """A full `config` mapping, or OpenAI's fields: model, training_file (`datanet[@snapshot]`), hyperparameters.

    Checked as an API submission: no `output.dir`, a model the server knows, sizes within the `factory` limits."""
    cfg = _parse_request(body, settings.models.default)
    check_api_config(settings, cfg)
    return cfg


def admit(session: Session, settings: Settings, principal: Principal, cfg: TrainConfig) -> None:
    """The data checks made before a job is queued: permissions and licenses (403 naming each datanet), and the
    rows the snapshots hold against `factory.max_rows` (checked again when the job loads them)."""
    found = resolve_sources(session, principal, cfg.data.datanets, commercial=cfg.data.commercial)
    check_rows(settings.factory, sum(snap.row_count for _, snap in found))


def _parse_request(body: dict[str, Any], default_model: str) -> TrainConfig:
    if "config" in body:
        return parse_config(body["config"], "config")
    if "training_file" not in body:
        raise FactoryError("give either config (a training config) or training_file (datanet or datanet@snapshot)")
    slug, _, snap = str(body["training_file"]).partition("@")
    hp = body.get("hyperparameters") or {}
    if not isinstance(hp, dict):
        raise FactoryError("hyperparameters must be an object", param="hyperparameters")
    train: dict[str, Any] = {"seed": body.get("seed", 0)}
    for ours, theirs in (("epochs", "n_epochs"), ("batch_size", "batch_size")):
        if isinstance(hp.get(theirs), int):
            train[ours] = hp[theirs]
    if isinstance(hp.get("learning_rate_multiplier"), int | float):
        train["lr"] = 1e-3 * hp["learning_rate_multiplier"]
    name = f"{slug}-{body.get('suffix') or uuid.uuid4().hex[:8]}"
    raw = {
        "model": {"name": body.get("model") or default_model},
        "data": {"datanets": [{"datanet": slug, "snapshot": snap or "latest"}]},
        "train": train,
        "output": {"name": name},
    }
    return parse_config(raw, "request")


def job_object(row: JobRow) -> dict[str, Any]:
    cfg = row.config
    err = {"code": "training_failed", "message": row.error, "param": None} if row.error else None
    return {
        "object": "fine_tuning.job", "id": row.id, "model": cfg["model"]["name"], "status": row.status,
        "created_at": _epoch(row.created_at), "finished_at": _epoch(row.finished_at),
        "fine_tuned_model": cfg["output"]["name"] if row.status == "succeeded" else None,
        "training_file": ",".join(f"{d['datanet']}@{d['snapshot']}" for d in cfg["data"]["datanets"]),
        "validation_file": None, "result_files": [], "seed": cfg["train"]["seed"], "error": err,
        "hyperparameters": {"n_epochs": cfg["train"]["epochs"], "batch_size": cfg["train"]["batch_size"],
                            "learning_rate": cfg["train"]["lr"]},
        "trained_tokens": (row.metrics or {}).get("tokens"), "adapter_hash": row.adapter_id,
        "metrics": row.metrics, "output_dir": _shown_dir(row), "progress": row.progress,
        "attempts": row.attempts, "cancel_requested": bool(row.cancel_requested),
    }  # fmt: skip


def list_jobs(session: Session, who: Principal, limit: int = 20, offset: int = 0) -> list[JobRow]:
    """Training jobs newest first, whichever door started them (API, studio, `tally train`, a pipeline's step):
    an admin sees every job, anyone else their own."""
    query = select(JobRow).where(JobRow.kind == "train").order_by(JobRow.created_at.desc(), JobRow.id)
    if not who.has("admin"):
        query = query.where(JobRow.created_by == who.address)
    rows = list(session.execute(query.offset(offset).limit(limit)).scalars())
    for row in rows:
        session.expunge(row)
    return rows


def visible_job(session: Session, who: Principal, job_id: str) -> JobRow:
    """The training job `job_id` if `who` may see it (theirs, or any for an admin); otherwise the same not-found
    as for no job, so job ids of others do not leak."""
    row = session.get(JobRow, job_id)
    if row is None or row.kind != "train" or (row.created_by != who.address and not who.has("admin")):
        raise FactoryError(f"no fine-tuning job {job_id!r}", kind="not_found", param="job_id")
    session.expunge(row)
    return row


def _shown_dir(row: JobRow) -> str:
    """Where the adapter goes, as its developer may see it: the server's own paths stay private."""
    if row.config["output"].get("dir"):
        return row.output_dir
    return f"<data_dir>/adapters/{row.created_by.lower()}/{row.config['output']['name']}"


class JobQueue:
    """The API's side of jobs: insert a queued row, ask one to cancel. Workers do the rest."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings, self.ledger = settings, ledger

    def submit(self, principal: Principal, cfg: TrainConfig) -> dict[str, Any]:
        """Queue a job, refusing at once (409) a name another developer owns or an adapter that already exists."""
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        out = output_dir(self.settings, cfg, principal.address)
        with self.ledger.store.transaction() as s:
            check_name(s, principal, cfg.output.name)
            check_free(self.settings, out, cfg.output.name)
            check_not_training(s, out, cfg.output.name)
            row = insert_job(s, JobRow(
                id=job_id, status="queued", config=cfg.model_dump(mode="json"), created_by=principal.address,
                created_at=now_ts(), output_dir=str(out), kind="train", runner="worker",
                payload={**principal_payload(principal), "limits": True}, attempts=0, cancel_requested=0,
            ))  # fmt: skip
            return job_object(row)

    def cancel(self, job_id: str) -> None:
        request_cancel(self.ledger.store, job_id)

    def close(self) -> None:
        """Nothing runs in this process: a job in progress carries on in its worker."""


def job_events(row: JobRow, after: int = 0) -> list[dict[str, Any]]:
    """The job's training events after the first `after`, as OpenAI fine_tuning.job.event objects."""
    out = []
    final = Path(row.output_dir)
    where = final if (final / LOG_NAME).is_file() else staging_dir(final)  # still training: the staging directory
    for i, e in enumerate(read_log(where / LOG_NAME)[after:], start=after):
        msg = f"step {e['step']}/{e['total_steps']}: loss={e['loss']:.4f}" if e["type"] == "train" else e["type"]
        out.append({"object": "fine_tuning.job.event", "id": f"{row.id}-{i}", "created_at": int(time.time()),
                    "level": "info", "message": msg, "type": "metrics" if e["type"] == "train" else "message",
                    "data": e})  # fmt: skip
    return out
