"""`tally adapters add|list|remove`: the registry of LoRA adapters the server loads at start. Thin: the registry
file logic lives in `tally.engine.registry` (torch-free, so these commands start fast)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from tally.cli.common import cli_errors, console, load_cli_settings
from tally.engine import registry

app = typer.Typer(help="Register LoRA adapters (PEFT directories) for the server.", no_args_is_help=True)


def _path() -> Path:
    return registry.registry_path(load_cli_settings().data_dir)


@app.command("add")
def add(
    name: str = typer.Argument(..., help="the name clients pass as `model`"),
    path: Path = typer.Argument(..., help="a PEFT directory: adapter_config.json + adapter_model.safetensors"),
    pinned: bool = typer.Option(False, "--pinned", help="keep it in the host cache once loaded"),
) -> None:
    """Register (or re-point) an adapter; a running server picks it up on restart or via /v1/load_lora_adapter."""
    with cli_errors():
        entry = registry.add(_path(), name, path, pinned=pinned)
    console.print(f"registered [bold]{escape(entry.name)}[/] -> {escape(entry.path)} (id {entry.adapter_id[:16]})")


@app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="print JSON")) -> None:
    """The registered adapters."""
    entries = registry.read_registry(_path())
    if as_json:
        import json

        console.print_json(json.dumps([e.__dict__ for e in entries.values()]))
        return
    if not entries:
        console.print("no adapters registered (tally adapters add NAME PATH)")
        return
    table = Table("name", "path", "id", "pinned")
    for e in entries.values():
        table.add_row(escape(e.name), escape(e.path), e.adapter_id[:16], "yes" if e.pinned else "")
    console.print(table)


@app.command("remove")
def remove(name: str = typer.Argument(...)) -> None:
    """Forget an adapter (its files are left alone)."""
    with cli_errors():
        entry = registry.remove(_path(), name)
    console.print(f"removed {escape(entry.name)}")
