"""Factory pages: start a training run (with its YAML config and `tally train` command), every run with its live
loss curve and log (server-sent events), cancel, publish, evaluations and leaderboards, pipelines and their steps.

Each action calls the function the API and the CLI call: `factory.jobs.config_from_request`, `admit` and the
runtime's `JobQueue` (what `POST /v1/fine_tuning/jobs` does), `factory.jobs.list_jobs` / `visible_job` /
`job_events`, `factory.service.publish_adapter` (`tally publish`), `factory.evaluation.leaderboard` and
`factory.pipeline.pipeline_status` (`tally pipeline status`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml
from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import Response
from sse_starlette.sse import EventSourceResponse

from tally.config.errors import TallyError
from tally.factory.config import ALL_PROJECTIONS
from tally.factory.jobs import TERMINAL, admit, config_from_request, job_events, job_object, list_jobs, visible_job
from tally.studio.pages import View, page, redirect, render

router = APIRouter()

TRAIN_ROLES = ("developer", "owner")  # who may start a run: the API's rule for POST /v1/fine_tuning/jobs
FORM_DEFAULTS: dict[str, Any] = {
    "datanet": "", "snapshot": "latest", "name": "", "rank": 8, "alpha": 16, "epochs": 3, "batch_size": 4,
    "lr": 0.001, "max_length": 256, "eval_fraction": 0.0, "seed": 0, "dims": 512,
    "targets": ["q_proj", "v_proj"], "publish": False,
}  # fmt: skip


def _can_train(view: View) -> bool:
    return view.who is not None and any(view.who.has(r) for r in TRAIN_ROLES)


def raw_config(values: dict[str, Any], model: str) -> dict[str, Any]:
    """The training config a form describes: exactly what `tally train` reads from its YAML file."""
    return {
        "model": {"name": model},
        "method": {"rank": values["rank"], "alpha": values["alpha"], "targets": list(values["targets"])},
        "data": {
            "datanets": [{"datanet": values["datanet"], "snapshot": values["snapshot"] or "latest"}],
            "max_length": values["max_length"],
            "eval_fraction": values["eval_fraction"],
        },
        "train": {"epochs": values["epochs"], "batch_size": values["batch_size"], "lr": values["lr"],
                  "seed": values["seed"]},
        "influence": {"dims": values["dims"]},
        "output": {"name": values["name"], "publish": bool(values["publish"])},
    }  # fmt: skip


def config_yaml(raw: dict[str, Any]) -> str:
    return yaml.safe_dump(raw, sort_keys=False, default_flow_style=False, width=100)


def train_command(raw: dict[str, Any], who: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(raw["output"]["name"]) or "run")
    return f"tally train {name}.yaml --as {who}"


def _trainable_datanets(view: View) -> list[str]:
    from tally.datanets.service import list_datanets

    if view.who is None:
        return []
    with view.runtime.store.read() as s:
        return [d.slug for d in list_datanets(s, view.who) if "train" in d.uses]


def _number(text: str, kind: type, field: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise TallyError(f"{field}: {text!r} is not a number", kind="invalid", param=field) from None


def _form_values(form: Any) -> dict[str, Any]:
    values = dict(FORM_DEFAULTS)
    for key in ("datanet", "snapshot", "name"):
        values[key] = str(form.get(key, "")).strip()
    for key in ("rank", "epochs", "batch_size", "max_length", "seed", "dims"):
        values[key] = _number(str(form.get(key, FORM_DEFAULTS[key])), int, key)
    for key in ("alpha", "lr", "eval_fraction"):
        values[key] = _number(str(form.get(key, FORM_DEFAULTS[key])), float, key)
    values["targets"] = [t for t in form.getlist("targets") if t in ALL_PROJECTIONS] or ["q_proj", "v_proj"]
    values["publish"] = form.get("publish") == "on"
    return values


def _runs_context(view: View, offset: int = 0) -> dict[str, Any]:
    from tally.factory.pipeline import pipeline_status

    if view.who is None:
        return {"runs": [], "pipelines": []}
    with view.runtime.store.read() as s:
        runs = [job_object(r) | {"runner": r.runner, "created": r.created_at[:16].replace("T", " ")}
                for r in list_jobs(s, view.who, view.page_size, offset)]  # fmt: skip
    return {"runs": runs, "pipelines": pipeline_status(view.runtime.ledger, None, limit=10)}


@router.get("/factory")
def factory(request: Request, offset: int = Query(0, ge=0), view: View = Depends(page("key"))) -> Response:
    values = dict(FORM_DEFAULTS)
    datanets = _trainable_datanets(view)
    values["datanet"] = datanets[0] if datanets else ""
    values["name"] = f"{values['datanet'] or 'my'}-lora"
    return _form_page(request, view, values, datanets, offset=offset)


def _form_page(
    request: Request, view: View, values: dict[str, Any], datanets: list[str], *, error: TallyError | None = None,
    offset: int = 0,
) -> Response:  # fmt: skip
    model = view.runtime.settings.models.default
    raw = raw_config(values, model)
    assert view.who is not None
    return render(
        request, view, "factory/index.html", 400 if error else 200, nav="factory", values=values, datanets=datanets,
        projections=ALL_PROJECTIONS, model=model, yaml_text=config_yaml(raw), command=train_command(raw, view.who.name),
        can_train=_can_train(view), error=error, offset=offset, **_runs_context(view, offset),
    )  # fmt: skip


@router.post("/factory/preview")
async def preview(request: Request, view: View = Depends(page("key"))) -> Response:
    """The YAML config and command of the form as it stands (htmx swaps them in while the user types)."""
    assert view.who is not None
    try:
        values = _form_values(await request.form())
    except TallyError as exc:
        return render(request, view, "factory/_config.html", yaml_text="", command="", problem=exc.message)
    raw = raw_config(values, view.runtime.settings.models.default)
    problem = None
    try:
        config_from_request({"config": raw}, view.runtime.settings)
    except TallyError as exc:
        problem = exc.message
    return render(request, view, "factory/_config.html", yaml_text=config_yaml(raw),
                  command=train_command(raw, view.who.name), problem=problem)  # fmt: skip


@router.post("/factory/runs")
async def start_run(request: Request, view: View = Depends(page("role", *TRAIN_ROLES))) -> Response:
    """Queue a run exactly as `POST /v1/fine_tuning/jobs` does: checked now, trained by a worker."""
    assert view.who is not None
    form = await request.form()
    datanets = _trainable_datanets(view)
    values = dict(FORM_DEFAULTS)
    try:
        values = _form_values(form)
        cfg = config_from_request({"config": raw_config(values, view.runtime.settings.models.default)},
                                  view.runtime.settings)  # fmt: skip
        with view.runtime.store.read() as s:
            admit(s, view.runtime.settings, view.who, cfg)
        job = view.runtime.jobs.submit(view.who, cfg)
    except TallyError as exc:
        return _form_page(request, view, values, datanets, error=exc)
    return redirect(request, f"/factory/runs/{job['id']}")


def _job(view: View, job_id: str) -> Any:
    assert view.who is not None
    with view.runtime.store.read() as s:
        return visible_job(s, view.who, job_id)


def _adapter_state(view: View, row: Any) -> dict[str, Any]:
    """The run's adapter once trained: whether a served name points at it, and its recorded evaluations."""
    from tally.engine.registry import read_registry, registry_path
    from tally.factory.evaluation import adapter_evaluations

    if not row.adapter_id:
        return {"adapter": None, "evaluations": []}
    served = [e.name for e in read_registry(registry_path(view.runtime.settings.data_dir)).values()
              if e.adapter_id == row.adapter_id]  # fmt: skip
    with view.runtime.store.read() as s:
        evaluations = [e.model_dump() for e in adapter_evaluations(s, row.adapter_id)]
    info = {"name": served[0] if served else row.config["output"]["name"], "published": bool(served),
            "id": row.adapter_id}  # fmt: skip
    return {"adapter": info, "evaluations": evaluations}


@router.get("/factory/runs/{job_id}")
def run_page(request: Request, job_id: str, view: View = Depends(page("key"))) -> Response:
    row = _job(view, job_id)
    events = [e["data"] for e in job_events(row)]
    return render(
        request, view, "factory/run.html", nav="factory", job=job_object(row) | {"runner": row.runner},
        events=events, terminal=row.status in TERMINAL, config_text=config_yaml(row.config),
        command=train_command(row.config, view.who.name if view.who else "you"), **_adapter_state(view, row),
    )  # fmt: skip


@router.get("/factory/runs/{job_id}/events")
async def run_events(
    request: Request, job_id: str, after: int = Query(0, ge=0), view: View = Depends(page("key"))
) -> EventSourceResponse:
    """The run's training events as server-sent events, from `after` on, until it ends (as the API streams them)."""
    _job(view, job_id)

    async def events() -> AsyncIterator[dict[str, str]]:
        seen = after
        while True:
            row = await asyncio.to_thread(_job, view, job_id)
            for e in await asyncio.to_thread(job_events, row, seen):
                seen += 1
                yield {"event": "train-event", "id": str(seen), "data": json.dumps(e["data"])}
            if row.status in TERMINAL:
                yield {"event": "end", "data": json.dumps({"status": row.status, "error": row.error})}
                return
            await asyncio.sleep(0.5)

    return EventSourceResponse(events(), ping=15)


@router.post("/factory/runs/{job_id}/cancel")
def cancel_run(request: Request, job_id: str, view: View = Depends(page("key"))) -> Response:
    _job(view, job_id)
    view.runtime.jobs.cancel(job_id)
    return redirect(request, f"/factory/runs/{job_id}")


@router.post("/factory/runs/{job_id}/publish")
def publish_run(
    request: Request, job_id: str, name: str = Form("", max_length=100), view: View = Depends(page("key"))
) -> Response:
    """Serve the run's adapter under `name`: `tally publish` (factory.service.publish_adapter)."""
    from tally.factory.service import publish_adapter

    assert view.who is not None
    row = _job(view, job_id)
    if row.status != "succeeded":
        raise TallyError(f"run {job_id} has not succeeded ({row.status}): nothing to publish", kind="conflict")
    served = name.strip() or row.config["output"]["name"]
    publish_adapter(view.runtime.settings, view.runtime.ledger, view.who, served, Path(row.output_dir))
    return redirect(request, f"/models/{served}")


@router.get("/factory/leaderboard")
def leaderboard_page(
    request: Request, datanet: str = Query("", max_length=64), metric: str = Query("exact_match", max_length=32),
    view: View = Depends(page("key")),
) -> Response:  # fmt: skip
    from tally.datanets.service import get_datanet
    from tally.factory.evaluation import leaderboard

    assert view.who is not None
    board: list[dict[str, Any]] = []
    datanets = _readable_datanets(view)
    if datanet:
        with view.runtime.store.read() as s:
            get_datanet(s, view.who, datanet)  # a private datanet's board is as private as the datanet
            board = leaderboard(s, datanet, metric)
    return render(request, view, "factory/leaderboard.html", nav="factory", board=board, datanet=datanet,
                  metric=metric, datanets=datanets, metrics=METRICS)  # fmt: skip


METRICS = ("exact_match", "token_f1", "accuracy", "loss", "perplexity")


def _readable_datanets(view: View) -> list[str]:
    from tally.datanets.service import list_datanets

    assert view.who is not None
    with view.runtime.store.read() as s:
        return [d.slug for d in list_datanets(s, view.who)]
