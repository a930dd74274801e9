"""What each pipeline step kind does. Steps call the same service functions as the CLI and the API."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import yaml

from tally.datanets import snapshots
from tally.factory import evaluation, service
from tally.factory.config import SourceCfg, parse_config
from tally.factory.errors import FactoryError
from tally.factory.lease import JobPaused
from tally.factory.pipeline_spec import StepSpec, parse_condition

if TYPE_CHECKING:
    from tally.factory.pipeline import Context

_OPS = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
    "==": lambda a, b: a == b,
}  # fmt: skip


class GateFailed(FactoryError):
    """A metric missed its threshold: the step fails and nothing downstream (publish, deploy) runs. A conflict: the
    request was well formed, but the adapter's measured state does not allow going on."""

    kind = "conflict"


def current_snapshot(ctx: Context, step: StepSpec) -> str:
    """The datanet's latest snapshot id (frozen first when the step says `create: true`)."""
    assert step.datanet is not None
    if step.create:
        with ctx.ledger.store.transaction() as s:
            return snapshots.create_snapshot(s, ctx.ledger, ctx.principal, step.datanet).id
    with ctx.ledger.store.read() as s:
        return snapshots.get_snapshot(s, ctx.principal, step.datanet, "latest").id


def _of_kind(ctx: Context, needs: dict[str, dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [out for name, out in needs.items() if ctx.spec.steps[name].kind == kind]


def _train(ctx: Context, name: str, step: StepSpec, input_hash: str, needs: dict[str, dict[str, Any]]) -> dict:
    raw: dict[str, Any] = (
        yaml.safe_load((ctx.base_dir / step.config).read_text(encoding="utf-8"))
        if isinstance(step.config, str)
        else dict(step.config or {})
    )
    pinned = {o["datanet"]: o["snapshot"] for o in _of_kind(ctx, needs, "snapshot")}
    data = dict(raw.get("data") or {})
    sources = [dict(d) for d in data.get("datanets") or [{"datanet": d} for d in pinned]]
    for src in sources:  # train on exactly the snapshot the upstream step saw, never a later "latest"
        if src["datanet"] in pinned:
            src["snapshot"] = pinned[src["datanet"]]
    out_dir = ctx.settings.data_dir / "pipelines" / ctx.spec.name / name / input_hash[:16]
    output = {"name": f"{ctx.spec.name}-{name}", **(raw.get("output") or {}), "dir": str(out_dir), "publish": False}
    cfg = parse_config({**raw, "data": {**data, "datanets": sources}, "output": output}, f"step {name!r} config")
    pipeline = {"name": ctx.spec.name, "step": name, "author": ctx.principal.address}
    # the step's directory is addressed by its input hash: an adapter recorded there is this step's own result,
    # committed by an attempt that was killed before the step could be marked done
    result = service.already_trained(ctx.settings, ctx.ledger, ctx.principal, cfg) or service.train(
        ctx.settings, ctx.ledger, ctx.principal, cfg, resume=True, pipeline=pipeline, job=ctx.job
    )
    if not result.finished:  # the worker is stopping: the run goes back to the queue, this step resumes then
        raise JobPaused(f"step {name!r}")
    return {"adapter": cfg.output.name, "adapter_hash": result.adapter_hash, "path": str(result.out_dir),
            "base_model": cfg.model.name,
            "metrics": result.manifest.metrics.model_dump() if result.manifest else None,
            "ledger_seq": result.ledger_seq}  # fmt: skip


def _eval(ctx: Context, step: StepSpec, needs: dict[str, dict[str, Any]]) -> dict:
    sources = [SourceCfg(datanet=d.partition("@")[0], snapshot=d.partition("@")[2] or "latest") for d in step.datanets]
    sources += [SourceCfg(datanet=o["datanet"], snapshot=o["snapshot"]) for o in _of_kind(ctx, needs, "snapshot")]
    trained = _of_kind(ctx, needs, "train")
    adapters = [o["path"] for o in trained]
    bases = {o["base_model"] for o in trained}
    if len(bases) > 1:
        raise FactoryError(f"an eval step compares adapters of one base model, not {', '.join(sorted(bases))}")
    if not sources:
        raise FactoryError("an eval step needs datanets or a snapshot step among its needs")
    base = bases.pop() if bases else None
    results = evaluation.evaluate(
        ctx.settings,
        ctx.ledger,
        ctx.principal,
        sources,
        adapters=adapters,
        include_base=step.include_base,
        base_model=base,
    )
    last = [r for r in results if r.adapter_hash] or results
    keys = set.intersection(*(set(r.metrics) for r in last))
    mean = {k: sum(r.metrics[k] for r in last) / len(last) for k in sorted(keys)}
    table = [{"model": r.model, "datanet": r.datanet, "snapshot": r.snapshot, "metrics": r.metrics} for r in results]
    return {"metrics": mean, "results": table}


def _gate(ctx: Context, step: StepSpec, needs: dict[str, dict[str, Any]]) -> dict:
    metrics: dict[str, float] = {}
    for out in _of_kind(ctx, needs, "eval"):
        metrics.update(out["metrics"])
    missed, values = [], {}
    for metric, cond in step.require.items():
        op, threshold = parse_condition(cond)
        value = metrics.get(metric)
        if value is None or not _OPS[op](value, threshold):
            missed.append(f"{metric} {value if value is None else round(value, 4)} is not {op} {threshold}")
            values[metric] = {"value": value, "required": cond}
    if missed:
        raise GateFailed("gate failed: " + "; ".join(missed), missed=values)
    return {"passed": True, "metrics": {k: metrics[k] for k in step.require}}


def _publish(ctx: Context, step: StepSpec, needs: dict[str, dict[str, Any]]) -> dict:
    trained = _of_kind(ctx, needs, "train")
    if len(trained) != 1:
        raise FactoryError("a publish step needs exactly one train step among its needs")
    name = step.name or trained[0]["adapter"]
    from pathlib import Path

    entry = service.publish_adapter(ctx.settings, ctx.ledger, ctx.principal, name, Path(trained[0]["path"]))
    return entry


def _deploy(ctx: Context, step: StepSpec, needs: dict[str, dict[str, Any]]) -> dict:
    published = _of_kind(ctx, needs, "publish")
    if len(published) != 1:
        raise FactoryError("a deploy step needs exactly one publish step among its needs")
    entry = published[0]
    if not step.url:
        return {**entry, "deployed_to": "adapters.json"}  # the engine loads registered adapters at start
    import httpx

    key = os.environ.get("TALLY_API_KEY", "")
    response = httpx.post(
        step.url.rstrip("/") + "/v1/load_lora_adapter", json={"lora_name": entry["name"], "lora_path": entry["path"]},
        headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=60,
    )  # fmt: skip
    if response.status_code >= 400:
        raise FactoryError(
            f"deploy to {step.url} failed: {response.status_code} {response.text[:200]}",
            kind="unavailable",  # the target server refused or failed; nothing in the pipeline is wrong
            url=step.url,
            response_status=response.status_code,
        )
    return {**entry, "deployed_to": step.url}


def run_step(ctx: Context, name: str, step: StepSpec, input_hash: str, needs: dict[str, dict[str, Any]]) -> dict:
    if step.kind == "snapshot":
        assert step.datanet is not None
        with ctx.ledger.store.read() as s:
            snap = snapshots.get_snapshot(s, ctx.principal, step.datanet, current_snapshot(ctx, step))
        return {"datanet": snap.datanet, "snapshot": snap.id, "version": snap.version, "rows": snap.row_count}
    if step.kind == "train":
        return _train(ctx, name, step, input_hash, needs)
    if step.kind == "eval":
        return _eval(ctx, step, needs)
    if step.kind == "gate":
        return _gate(ctx, step, needs)
    if step.kind == "publish":
        return _publish(ctx, step, needs)
    return _deploy(ctx, step, needs)
