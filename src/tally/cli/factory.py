"""`tally train`, `tally eval`, `tally leaderboard`, `tally publish`, `tally pipeline run|watch|status`.

Mount in tally.cli.main:
    app.command("train")(factory.train_cmd)
    app.command("eval")(factory.eval_cmd)
    app.command("leaderboard")(factory.leaderboard_cmd)
    app.command("publish")(factory.publish_cmd)
    app.add_typer(factory.pipeline_app, name="pipeline")
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, load_cli_settings, opened_ledger

AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address)")
pipeline_app = typer.Typer(
    help="Pipelines: snapshot -> train -> eval -> gate -> publish -> deploy.", no_args_is_help=True
)


def _bar(progress: Progress) -> Any:
    """A listener that drives a rich progress bar from training events."""
    task = progress.add_task("training", total=None, info="")

    def on_event(e: dict[str, Any]) -> None:
        if e["type"] == "train":
            eta = f"eta {e['eta_s']:.0f}s" if e.get("eta_s") is not None else ""
            info = f"loss {e['loss']:.4f} lr {e['lr']:.2e} {e['tokens_per_s']:.0f} tok/s {eta}"
            progress.update(task, total=e["total_steps"], completed=e["step"], info=info)
        elif e["type"] == "eval":
            progress.console.print(f"step {e['step']}: eval loss {e['eval_loss']:.4f}")
        elif e["type"] == "index":
            progress.update(task, description="gradient index", total=e["total"], completed=e["done"], info="")
        elif e["type"] in ("early_stop", "resumed"):
            progress.console.print(f"{e['type'].replace('_', ' ')} at step {e['step']}")

    return on_event


def train_cmd(
    config: Path = typer.Argument(..., help="training config (YAML: model, method, data, train, eval, output)"),
    resume: bool = typer.Option(False, "--resume", help="continue from the output's latest checkpoint"),
    as_: str = AS,
) -> None:
    """Fine-tune a LoRA adapter on datanet snapshots the acting account may use for training."""
    from tally.factory import service
    from tally.factory.config import load_config

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, ledger):
        cfg = load_config(config)
        with store.read() as s:
            who = acting_principal(s, as_)
        columns = [TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}")]  # fmt: skip
        with Progress(*columns, console=console, transient=False) as progress:
            result = service.train(settings, ledger, who, cfg, resume=resume, listeners=[_bar(progress)])
    m = result.manifest
    if m is None:  # only a run told to stop early ends without one, and this command never tells it to
        console.print(f"training stopped before its end; `tally train --resume` continues from {result.out_dir}")
        raise typer.Exit(1)
    console.print(f"adapter {m.adapter.name} -> {result.out_dir}")
    console.print(f"adapter hash {result.adapter_hash}; ledger entry {result.ledger_seq}")
    console.print_json(json.dumps(m.metrics.model_dump()))


def eval_cmd(
    data: list[str] = typer.Option(..., "--data", help="datanet or datanet@snapshot (use eval); repeatable"),
    adapter: list[str] = typer.Option([], "--adapter", help="adapter name, registry name or directory; repeatable"),
    base: bool = typer.Option(True, "--base/--no-base", help="also evaluate the base model"),
    model: str = typer.Option(None, help="base model (default: settings models.default)"),
    max_new_tokens: int = typer.Option(32),
    as_: str = AS,
) -> None:
    """Loss, perplexity, exact match, token F1 (and accuracy for label sets) of the base model and adapters."""
    from tally.factory.config import SourceCfg
    from tally.factory.evaluation import evaluate

    settings = load_cli_settings()
    sources = [SourceCfg(datanet=d.partition("@")[0], snapshot=d.partition("@")[2] or "latest") for d in data]
    with cli_errors(), opened_ledger(settings) as (store, ledger):
        with store.read() as s:
            who = acting_principal(s, as_)
        results = evaluate(settings, ledger, who, sources, base_model=model, adapters=adapter, include_base=base,
                           max_new_tokens=max_new_tokens)  # fmt: skip
    table = Table("model", "datanet", "rows", "loss", "ppl", "exact match", "token F1", "accuracy")
    for r in results:
        m = r.metrics
        acc = f"{m['accuracy']:.3f}" if "accuracy" in m else "-"
        table.add_row(r.model, f"{r.datanet}@{r.snapshot[:12]}", str(r.examples), f"{m['loss']:.4f}",
                      f"{m['perplexity']:.2f}", f"{m['exact_match']:.3f}", f"{m['token_f1']:.3f}", acc)  # fmt: skip
    console.print(table)


def leaderboard_cmd(
    datanet: str, metric: str = typer.Option("exact_match", help="rank by this metric"), as_: str = AS
) -> None:
    """The latest evaluation of every model on a datanet, best first."""
    from tally.datanets.service import get_datanet
    from tally.factory.evaluation import leaderboard

    with cli_errors(), opened_ledger() as (store, _), store.read() as s:
        get_datanet(s, acting_principal(s, as_), datanet)
        board = leaderboard(s, datanet, metric)
    table = Table("rank", "model", metric, "rows", "snapshot", "evaluated")
    for b in board:
        value = "-" if b[metric] is None else f"{b[metric]:.4f}"
        table.add_row(str(b["rank"]), b["model"], value, str(b["examples"]), b["snapshot"][:12], b["evaluated_at"])
    console.print(table)


def publish_cmd(
    adapter: str = typer.Argument(..., help="trained adapter name or directory"),
    name: str = typer.Option(None, help="name to serve it under (default: the adapter's name)"),
    as_: str = AS,
) -> None:
    """Register a trained adapter in adapters.json so the engine serves it."""
    from tally.factory.evaluation import find_adapter
    from tally.factory.service import publish_adapter

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, ledger):
        with store.read() as s:
            who = acting_principal(s, as_)
            directory = find_adapter(settings, s, adapter)
        entry = publish_adapter(settings, ledger, who, name or adapter, directory)
    console.print(f"published {entry['name']} ({entry['adapter_id'][:16]}) from {entry['path']}")


def _report(step: str, status: str, detail: str) -> None:
    colour = {"succeeded": "green", "cached": "cyan", "failed": "red", "skipped": "yellow"}.get(status, "white")
    console.print(f"[{colour}]{status:>9}[/] {step}  {detail}", highlight=False)


@pipeline_app.command("run")
def pipeline_run(pipeline: Path, as_: str = AS) -> None:
    """Run a pipeline; steps whose inputs are unchanged since a successful run are skipped (cached)."""
    from tally.factory.pipeline import run_pipeline
    from tally.factory.pipeline_spec import load_pipeline

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, ledger):
        spec, base = load_pipeline(pipeline)
        with store.read() as s:
            who = acting_principal(s, as_)
        result = run_pipeline(settings, ledger, who, spec, base, report=_report)
    console.print(f"run {result['run']}: {result['status']}")
    if result["status"] != "succeeded":
        raise typer.Exit(1)


@pipeline_app.command("watch")
def pipeline_watch(
    pipeline: Path, interval: float = typer.Option(30.0, help="seconds between checks"),
    max_checks: int = typer.Option(None, help="stop after this many checks (default: run until interrupted)"),
    as_: str = AS,
) -> None:  # fmt: skip
    """Re-run the pipeline whenever one of its snapshot steps' datanets has a new snapshot."""
    from tally.factory.pipeline import watch
    from tally.factory.pipeline_spec import load_pipeline

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, ledger):
        spec, base = load_pipeline(pipeline)
        with store.read() as s:
            who = acting_principal(s, as_)
        runs = watch(settings, ledger, who, spec, base, interval_s=interval, max_checks=max_checks, report=_report)
    console.print(f"{len(runs)} run(s)")


@pipeline_app.command("status")
def pipeline_status_cmd(pipeline: str = typer.Argument(None), limit: int = typer.Option(5)) -> None:
    """The latest runs and the status of each of their steps."""
    from tally.factory.pipeline import pipeline_status

    with cli_errors(), opened_ledger() as (_, ledger):
        runs = pipeline_status(ledger, pipeline, limit)
    for run in runs:
        console.print(f"{run['run']} {run['pipeline']} {run['status']} ({run['trigger']}, {run['created_at']})")
        for step in run["steps"]:
            _report(step["name"], step["status"], (step["error"] or "")[:160])
