"""`tally attribution show|reputation|flagged`: read attribution records and what they add up to per contributor."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, load_cli_settings, opened_ledger

if TYPE_CHECKING:
    from tally.attribution import FlaggedRow

app = typer.Typer(help="Attribution records, contributor reputation, flagged rows.", no_args_is_help=True)
AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address)")


@app.command("show")
def show_cmd(
    inference_id: str = typer.Argument(..., help="the attribution id `tally ask` printed (a unique prefix will do)"),
    receipt: bool = typer.Option(False, help="also print the ledger receipt"),
) -> None:
    """The full attribution record of one answer (JSON), optionally with its ledger receipt."""
    from tally.attribution import get_record
    from tally.chain import anchored_receipt

    with opened_ledger(load_cli_settings()) as (store, ledger), cli_errors(), store.read() as s:
        record, seq = get_record(s, inference_id, prefix=True)
    out: dict[str, object] = {"record": record.model_dump(mode="json"), "ledger_entry": seq}
    if receipt:
        out["receipt"] = anchored_receipt(store, ledger, seq)
    console.print_json(json.dumps(out))


@app.command("reputation")
def reputation_cmd(
    address: str, min_answers: int = typer.Option(5, help="answers before a row can be flagged")
) -> None:
    """A contributor's accepted and rejected rows, the mean signed influence of their rows, and flagged rows."""
    from tally.attribution import contributor_reputation

    with opened_ledger(load_cli_settings()) as (store, _), store.read() as s:
        rep = contributor_reputation(s, address, min_answers)
    console.print(
        f"{rep.address}: {rep.accepted} accepted, {rep.rejected} rejected rows; influence over {rep.answers} "
        f"answers: mean {rep.mean_influence:+.3f} ({rep.sign})"
    )
    _print_flagged(rep.flagged)


@app.command("flagged")
def flagged_cmd(
    datanet: str, min_answers: int = typer.Option(5, help="answers before a row can be flagged"), as_: str = AS
) -> None:
    """For a datanet's owner: rows that keep pulling answers the wrong way (negative mean influence)."""
    from tally.attribution import flagged_rows_for_owner

    with opened_ledger(load_cli_settings()) as (store, _), cli_errors(), store.read() as s:
        rows = flagged_rows_for_owner(s, acting_principal(s, as_), datanet, min_answers)
    if not rows:
        console.print(f"no row of {datanet} is flagged (min {min_answers} answers)")
    _print_flagged(rows)


def _print_flagged(rows: list[FlaggedRow]) -> None:
    if not rows:
        return
    table = Table("datanet", "row", "contributor", "answers", "mean influence", title="flagged rows")
    for r in rows:
        table.add_row(r.datanet, r.row_hash[:16], r.contributor, str(r.answers), f"{r.mean_influence:+.3f}")
    console.print(table)
