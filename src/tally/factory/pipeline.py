"""Running pipelines: each step is cached by the hash of its inputs, retried on failure, recorded in the database.

A step's input hash covers its kind, its spec (a train step's config file contents, not its path) and the
outputs of the steps it needs. A snapshot step's output is the datanet's latest snapshot id, so a new snapshot
changes exactly the hashes downstream of it: those steps run, every other step is `cached` (its previous
outputs reused, nothing executed). A failed step marks everything downstream `skipped`.
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
from tally.factory.pipeline_spec import PipelineSpec, StepSpec
from tally.factory.tables import PipelineRunRow, PipelineStepRow
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
    *, trigger: str = "manual", report: Report | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Run every step whose inputs changed; returns the run's id, status and each step's status and outputs."""
    ctx = Context(settings, ledger, principal, spec, base_dir)
    say = report or (lambda *_: None)
    run_id = f"run-{uuid.uuid4().hex[:20]}"
    with ledger.store.transaction() as s:
        s.add(PipelineRunRow(id=run_id, pipeline=spec.name, spec_hash=_digest(spec.model_dump(mode="json")),
                             trigger=trigger, status="running", created_at=now_ts()))  # fmt: skip
    outputs: dict[str, dict[str, Any]] = {}
    statuses: dict[str, str] = {}
    for name in spec.order():
        step = spec.steps[name]
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
            _record(run_id, ctx, name, step, status="cached", input_hash=input_hash, outputs=hit, finished_at=now_ts())
            say(name, "cached", input_hash[:12])
            continue
        statuses[name] = _execute(run_id, ctx, name, step, input_hash, outputs, say)
    status = "succeeded" if all(v in ("succeeded", "cached") for v in statuses.values()) else "failed"
    with ledger.store.transaction() as s:
        run = s.get(PipelineRunRow, run_id)
        assert run is not None
        run.status, run.finished_at = status, now_ts()
    return {"run": run_id, "status": status, "steps": statuses, "outputs": outputs}


def _execute(
    run_id: str, ctx: Context, name: str, step: StepSpec, input_hash: str, outputs: dict[str, dict[str, Any]],
    say: Report,
) -> str:  # fmt: skip
    retries = ctx.spec.retries if step.retries is None else step.retries
    error = ""
    for attempt in range(1, retries + 2):
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
