"""Fine-tuning jobs (OpenAI style): queued in the database, run one at a time on a worker thread.

The job's events are its `trainer_log.jsonl`, so a client can follow a job from another process, and a server
restart loses nothing already written. Cancelling sets a flag that the training loop sees at its next event.
"""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
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
from tally.factory.service import output_dir, staging_dir, train
from tally.factory.tables import JobRow
from tally.factory.trainlog import LOG_NAME, read_log
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts

TERMINAL = {"succeeded", "failed", "cancelled"}


class JobCancelled(Exception):
    pass


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
        "metrics": row.metrics, "output_dir": _shown_dir(row),
    }  # fmt: skip


def _shown_dir(row: JobRow) -> str:
    """Where the adapter goes, as its developer may see it: the server's own paths stay private."""
    if row.config["output"].get("dir"):
        return row.output_dir
    return f"<data_dir>/adapters/{row.created_by.lower()}/{row.config['output']['name']}"


class JobRunner:
    """One worker thread: training saturates the CPU, so jobs queue rather than compete."""

    def __init__(self, settings: Settings, ledger: Ledger) -> None:
        self.settings, self.ledger = settings, ledger
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tally-ft")
        self.cancelled: set[str] = set()
        self.lock = threading.Lock()

    def submit(self, principal: Principal, cfg: TrainConfig) -> dict[str, Any]:
        """Queue a job, refusing at once (409) a name another developer owns or an adapter that already exists."""
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        out = output_dir(self.settings, cfg, principal.address)
        with self.ledger.store.transaction() as s:
            check_name(s, principal, cfg.output.name)
            check_free(self.settings, out, cfg.output.name)
            active = select(JobRow.id).where(JobRow.output_dir == str(out), JobRow.status.in_(("queued", "running")))
            if s.execute(active.limit(1)).first() is not None:
                raise FactoryError(
                    f"a job already trains adapter {cfg.output.name!r}; choose another output.name",
                    kind="conflict", param="output.name", name=cfg.output.name,
                )  # fmt: skip
            row = JobRow(
                id=job_id, status="queued", config=cfg.model_dump(mode="json"), created_by=principal.address,
                created_at=now_ts(), output_dir=str(out),
            )  # fmt: skip
            s.add(row)
            s.flush()
            obj = job_object(row)
        self.pool.submit(self._run, job_id, principal, cfg)
        return obj

    def close(self) -> None:
        """Stop taking jobs; queued ones are dropped (their rows stay `queued`), a running one finishes."""
        self.pool.shutdown(wait=False, cancel_futures=True)

    def cancel(self, job_id: str) -> None:
        with self.lock:
            self.cancelled.add(job_id)
        self._update(job_id, only_if="queued", status="cancelled", finished_at=now_ts())

    def _update(self, job_id: str, only_if: str | None = None, **fields: Any) -> None:
        with self.ledger.store.transaction() as s:
            row = s.get(JobRow, job_id)
            if row is not None and (only_if is None or row.status == only_if):
                for key, value in fields.items():
                    setattr(row, key, value)

    def _run(self, job_id: str, principal: Principal, cfg: TrainConfig) -> None:
        if job_id in self.cancelled:
            return
        self._update(job_id, status="running", started_at=now_ts())

        def check_cancel(_: dict[str, Any]) -> None:
            if job_id in self.cancelled:
                raise JobCancelled(job_id)

        try:
            result = train(
                self.settings, self.ledger, principal, cfg, listeners=[check_cancel], limits=self.settings.factory
            )
            status, error = "succeeded", None
            metrics = result.manifest.metrics.model_dump() if result.manifest else None
            adapter = result.adapter_hash
        except JobCancelled:
            status, error, metrics, adapter = "cancelled", None, None, None
        except Exception as exc:  # the job records any failure; the worker thread must survive it
            status, error, metrics, adapter = "failed", f"{type(exc).__name__}: {exc}", None, None
        self._update(job_id, status=status, error=error, metrics=metrics, adapter_id=adapter, finished_at=now_ts())


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
