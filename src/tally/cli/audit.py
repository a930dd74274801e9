"""`tally audit`: replay the ledger's events, re-derive the tables they determine and compare them with the database.

Mount in tally.cli.main:
    app.command("audit")(audit.audit_cmd)
"""

from __future__ import annotations

import json

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from tally.cli.common import cli_errors, console, opened_ledger


def audit_cmd(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Check the state against the ledger: exit 0 when every table agrees with the events, exit 5 naming the first
    divergence (table, key, field, the value the events give and the value the table holds)."""
    from tally.answers import audit as state

    with opened_ledger() as (store, ledger), cli_errors():
        with Progress(
            TextColumn("auditing"), BarColumn(), TextColumn("{task.completed}/{task.total} entries"),
            TimeRemainingColumn(), console=console, transient=True, disable=as_json,
        ) as bar:  # fmt: skip
            task = bar.add_task("audit", total=None)
            report = state.audit(
                store, ledger, progress=lambda done, total: bar.update(task, completed=done, total=total)
            )
        if as_json:
            console.print_json(json.dumps(report.as_json()))
        else:
            table = Table("table", "rows checked")
            for name, rows in report.tables.items():
                table.add_row(name, str(rows))
            console.print(table)
            replayed = f"{report.size} entries read, {report.events} events replayed in {report.seconds:.2f} s"
            if report.clean:
                console.print(f"every table agrees with the ledger: {replayed}")
            else:
                console.print(f"stopped at the first divergence: {replayed}")
        report.raise_for_divergence()
