"""Running pipelines: each step is cached by the hash of its inputs, retried on failure, recorded in the database.

A step's input hash covers its kind, its spec (a train step's config file contents, not its path) and the
outputs of the steps it needs. A snapshot step's output is the datanet's latest snapshot id, so a new snapshot
changes exactly the hashes downstream of it: those steps run, every other step is `cached` (its previous
outputs reused, nothing executed). A failed step marks everything downstream `skipped`.

A run is a job (`tally.factory.lease`): `tally pipeline run` runs it in its own process, `submit_pipeline` queues
it for a worker. A run interrupted in a worker resumes under the same run id: the steps it finished keep their
status and outputs, and a train step resumes from its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import select

from tally.config import Settings
from tally.factory import steps
from tally.factory.errors import FactoryError
from tally.factory.lease import JobCancelled, Lease, finish, insert_job, local_job
from tally.factory.pipeline_spec import PipelineSpec, StepSpec
from tally.factory.service import principal_payload
from tally.factory.tables import JobRow, PipelineRunRow, PipelineStepRow
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts

Report = Callable[[str, str, str], None]  # (step, status, detail)


@dataclass
class Context:
    settings: Settings
    ledger: Ledger
    principal: Principal
    spec: PipelineSpec
    base_dir: Path
    job: Lease | None = None  # the run's job: its training checks it for cancellation and pauses


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def step_inputs(ctx: Context, name: str, step: StepSpec, upstream: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything a step's result depends on; snapshot steps look up the datanet's current latest snapshot."""
    spec = step.model_dump(mode="json", exclude={"retries", "needs"})
    if step.kind == "train" and isinstance(step.config, str):
        spec["config"] = yaml.safe_load((ctx.base_dir / step.config).read_text(encoding="utf-8"))
    inputs: dict[str, Any] = {"kind": step.kind, "spec": spec, "needs": {n: upstream[n] for n in sorted(step.needs)}}
    if step.kind == "snapshot":
        inputs["current"] = steps.current_snapshot(ctx, step)
    return inputs


def _cached(ctx: Context, name: str, input_hash: str) -> dict[str, Any] | None:
    with ctx.ledger.store.read() as s:
        row = s.execute(
            select(PipelineStepRow)
            .where(
                PipelineStepRow.pipeline == ctx.spec.name,
                PipelineStepRow.name == name,
                PipelineStepRow.input_hash == input_hash,
                PipelineStepRow.status.in_(("succeeded", "cached")),
            )
            .order_by(PipelineStepRow.started_at.desc())
            .limit(1)
        ).scalar_one_or_none()
        return dict(row.outputs) if row is not None and row.outputs is not None else None


def _record(run_id: str, ctx: Context, name: str, step: StepSpec, **fields: Any) -> None:
    with ctx.ledger.store.transaction() as s:
        row = s.get(PipelineStepRow, (run_id, name))
        if row is None:
            row = PipelineStepRow(run_id=run_id, name=name, pipeline=ctx.spec.name, kind=step.kind, attempts=0,
                                  started_at=now_ts(), input_hash="")  # fmt: skip
            s.add(row)
        for key, value in fields.items():
            setattr(row, key, value)


def run_pipeline(
    settings: Settings, ledger: Ledger, principal: Principal, spec: PipelineSpec, base_dir: Path,
    *, trigger: str = "manual", report: Report | None = None, run_id: str | None = None, job: Lease | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every step whose inputs changed; returns the run's id, status and each step's status and outputs.

    A worker passes the `job` it claimed and the run id it was given (the same on every attempt); any other caller
    gets a job row run by this process, so a crash shows as an interrupted job rather than a run `running` forever."""
    run_id = run_id or f"run-{uuid.uuid4().hex[:20]}"
    if job is not None:
        return _run(Context(settings, ledger, principal, spec, base_dir, job), run_id, trigger, report)
    store = ledger.store
    lease = local_job(
        store, kind="pipeline", created_by=principal.address, config=spec.model_dump(mode="json"),
        output_dir=str(settings.data_dir / "pipelines" / spec.name),
        payload={**principal_payload(principal), "run_id": run_id, "base_dir": str(base_dir), "trigger": trigger},
    )  # fmt: skip
    with lease:
        try:
            result = _run(Context(settings, ledger, principal, spec, base_dir, lease), run_id, trigger, report)
        except (JobCancelled, KeyboardInterrupt):
            finish(store, lease.job_id, lease.owner, "cancelled")
            _end_run(ledger, run_id, "cancelled", "cancelled")
            raise FactoryError(f"pipeline run {run_id} cancelled (job {lease.job_id})", kind="conflict") from None
        except BaseException as exc:
            finish(store, lease.job_id, lease.owner, "failed", error=f"{type(exc).__name__}: {exc}")
            _end_run(ledger, run_id, "failed", f"{type(exc).__name__}: {exc}")
            raise
        failed = sorted(n for n, s in result["steps"].items() if s == "failed")
        finish(store, lease.job_id, lease.owner, result["status"], metrics={"steps": result["steps"]},
               error=f"steps failed: {', '.join(failed)}" if failed else None)  # fmt: skip
    return result


def submit_pipeline(
    settings: Settings, ledger: Ledger, principal: Principal, spec: PipelineSpec, base_dir: Path,
    *, trigger: str = "queued",
) -> dict[str, str]:  # fmt: skip
    """Queue a run for a worker; returns its job and run ids. Train configs given as files are read now and
    inlined (a step's input hash is of the config's contents either way, so cached results still match)."""
    steps_inline = {}
    for name, step in spec.steps.items():
        if step.kind == "train" and isinstance(step.config, str):
            config = yaml.safe_load((base_dir / step.config).read_text(encoding="utf-8"))
            step = step.model_copy(update={"config": config})
        steps_inline[name] = step
    inline = spec.model_copy(update={"steps": steps_inline})
    job_id, run_id = f"ftjob-{uuid.uuid4().hex[:24]}", f"run-{uuid.uuid4().hex[:20]}"
    with ledger.store.transaction() as s:
        insert_job(s, JobRow(
            id=job_id, status="queued", config=inline.model_dump(mode="json"), created_by=principal.address,
            created_at=now_ts(), output_dir=str(settings.data_dir / "pipelines" / spec.name), kind="pipeline",
            runner="worker", attempts=0, cancel_requested=0,
            payload={**principal_payload(principal), "run_id": run_id, "base_dir": str(base_dir), "trigger": trigger},
        ))  # fmt: skip
    return {"job": job_id, "run": run_id}


def _end_run(ledger: Ledger, run_id: str, status: str, error: str | None) -> None:
    with ledger.store.transaction() as s:
        run = s.get(PipelineRunRow, run_id)
        if run is not None and run.status == "running":
            run.status, run.error, run.finished_at = status, error, now_ts()


def _run(ctx: Context, run_id: str, trigger: str, report: Report | None) -> dict[str, Any]:
    spec, ledger = ctx.spec, ctx.ledger
    say = report or (lambda *_: None)
    with ledger.store.transaction() as s:
        run = s.get(PipelineRunRow, run_id)
        if run is None:
            s.add(PipelineRunRow(id=run_id, pipeline=spec.name, spec_hash=_digest(spec.model_dump(mode="json")),
                                 trigger=trigger, status="running", created_at=now_ts()))  # fmt: skip
            before: dict[str, tuple[str, dict[str, Any] | None, int]] = {}
        else:  # resumed: what the interrupted attempt finished stays finished
            run.status, run.error, run.finished_at = "running", None, None
            rows = s.execute(select(PipelineStepRow).where(PipelineStepRow.run_id == run_id)).scalars()
            before = {r.name: (r.status, r.outputs, r.attempts) for r in rows}
    outputs: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    try:
        for name in spec.order():
            step = spec.steps[name]
            status, prior_outputs, attempts = before.get(name, ("", None, 0))
            if status in ("succeeded", "cached", "failed", "skipped"):
                statuses[name] = status
                if prior_outputs is not None:
                    outputs[name] = dict(prior_outputs)
                say(name, status, "finished before the run was interrupted")
                continue
            if ctx.job is not None:
                ctx.job.check()
            if any(statuses[n] in ("failed", "skipped") for n in step.needs):
                statuses[name] = "skipped"
                _record(run_id, ctx, name, step, status="skipped", finished_at=now_ts())
                say(name, "skipped", "an upstream step did not succeed")
                continue
            try:
                input_hash = _digest(step_inputs(ctx, name, step, outputs))
            except Exception as exc:  # a missing config file or datanet fails this step, not the whole run
                statuses[name] = "failed"
                _record(run_id, ctx, name, step, status="failed", error=str(exc), finished_at=now_ts())
                say(name, "failed", str(exc))
                continue
            hit = _cached(ctx, name, input_hash)
            if hit is not None:
                outputs[name], statuses[name] = hit, "cached"
                _record(run_id, ctx, name, step, status="cached", input_hash=input_hash, outputs=hit,
                        finished_at=now_ts())  # fmt: skip
                say(name, "cached", input_hash[:12])
                continue
            statuses[name] = _execute(run_id, ctx, name, step, input_hash, outputs, say, attempts)
    except JobCancelled:
        _end_run(ledger, run_id, "cancelled", "cancelled")
        raise
    status = "succeeded" if all(v in ("succeeded", "cached") for v in statuses.values()) else "failed"
    _end_run(ledger, run_id, status, None)
    return {"run": run_id, "status": status, "steps": statuses, "outputs": outputs}


def _execute(
    run_id: str, ctx: Context, name: str, step: StepSpec, input_hash: str, outputs: dict[str, dict[str, Any]],
    say: Report, done: int = 0,
) -> str:  # fmt: skip
    """Run a step, with retries; `done` attempts were made before an interruption (they count)."""
    retries = ctx.spec.retries if step.retries is None else step.retries
    error = ""
    for attempt in range(done + 1, max(done + 1, retries + 1) + 1):
        _record(run_id, ctx, name, step, status="running", input_hash=input_hash, attempts=attempt)
        say(name, "running", f"attempt {attempt}")
        try:
            result = steps.run_step(ctx, name, step, input_hash, {n: outputs[n] for n in step.needs})
        except steps.GateFailed as exc:  # a gate's verdict is final: retrying cannot change the metrics
            error = str(exc)
            break
        except Exception as exc:  # recorded on the step; retried up to `retries` times
            error = f"{type(exc).__name__}: {exc}"
            if attempt <= retries:
                say(name, "retrying", error)
                time.sleep(ctx.spec.retry_delay_s)
            continue
        outputs[name] = result
        _record(run_id, ctx, name, step, status="succeeded", outputs=result, error=None, finished_at=now_ts())
        say(name, "succeeded", json.dumps(result, default=str)[:200])
        return "succeeded"
    _record(run_id, ctx, name, step, status="failed", error=error, finished_at=now_ts())
    say(name, "failed", error)
    return "failed"


def pipeline_status(ledger: Ledger, pipeline: str | None = None, limit: int = 5) -> list[dict[str, Any]]:
    """The latest runs (of one pipeline, or all) with their steps."""
    with ledger.store.read() as s:
        query = select(PipelineRunRow).order_by(PipelineRunRow.created_at.desc()).limit(limit)
        if pipeline:
            query = query.where(PipelineRunRow.pipeline == pipeline)
        runs = []
        for run in s.execute(query).scalars():
            rows = s.execute(select(PipelineStepRow).where(PipelineStepRow.run_id == run.id)).scalars()
            runs.append({
                "run": run.id, "pipeline": run.pipeline, "status": run.status, "trigger": run.trigger,
                "created_at": run.created_at, "finished_at": run.finished_at,
                "steps": [{"name": r.name, "kind": r.kind, "status": r.status, "attempts": r.attempts,
                           "input_hash": r.input_hash, "error": r.error} for r in rows],
            })  # fmt: skip
        return runs


def watch(
    settings: Settings, ledger: Ledger, principal: Principal, spec: PipelineSpec, base_dir: Path,
    *, interval_s: float = 30.0, max_checks: int | None = None, report: Report | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Poll the snapshot steps' datanets; run the pipeline whenever a latest snapshot differs from the last run."""
    ctx = Context(settings, ledger, principal, spec, base_dir)
    seen: dict[str, str] | None = None
    runs: list[dict[str, Any]] = []
    checks = 0
    while max_checks is None or checks < max_checks:
        checks += 1
        current = {n: steps.current_snapshot(ctx, s) for n, s in spec.steps.items() if s.kind == "snapshot"}
        if current != seen:
            trigger = "watch" if seen is not None else "watch:start"
            runs.append(run_pipeline(settings, ledger, principal, spec, base_dir, trigger=trigger, report=report))
            seen = current
        if max_checks is None or checks < max_checks:
            time.sleep(interval_s)
    return runs
