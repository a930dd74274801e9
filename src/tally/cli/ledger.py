"""`tally ledger ...`: inspect, prove and verify the log."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from tally.cli.common import cli_errors, console, fail, opened_ledger
from tally.ledger import (
    ReceiptError,
    VerificationError,
    decode_entry,
    merkle,
    verify_ledger,
    verify_receipt,
)

app = typer.Typer(help="Inspect, prove and verify the tamper-evident ledger.", no_args_is_help=True)


def _know_every_event_type() -> None:
    from tally.answers import load_event_types

    load_event_types()


@app.command()
def head() -> None:
    """Show the log's size, root and newest signed checkpoint (signing one if the log has grown)."""
    with opened_ledger() as (_, ledger):
        checkpoint = ledger.checkpoint()
        console.print_json(
            json.dumps(
                {
                    "origin": ledger.origin,
                    "size": checkpoint.size,
                    "root": merkle.b64(checkpoint.root),
                    "verifier_key": ledger.signer.verifier.encode(),
                    "checkpoint": checkpoint.note,
                }
            )
        )


@app.command()
def show(seq: int = typer.Argument(..., help="sequence number of the entry")) -> None:
    """Print one entry."""
    with opened_ledger() as (_, ledger), cli_errors():
        body = ledger.entry(seq)
        console.print_json(decode_entry(body).model_dump_json())


@app.command()
def prove(
    index: int = typer.Argument(None, help="entry to prove included"),
    size: int = typer.Option(None, help="tree size to prove against (default: the newest checkpoint)"),
    consistency: int = typer.Option(None, help="prove the tree of this size is a prefix of --size instead"),
    receipt: Path = typer.Option(None, help="write the entry's self-contained receipt to this file"),
) -> None:
    """Print an inclusion proof (or a consistency proof with --consistency), or write a receipt."""
    from tally.chain import anchored_receipt

    with opened_ledger() as (store, ledger), cli_errors():
        if consistency is not None:
            new = size if size is not None else ledger.size()
            proof = ledger.consistency_proof(consistency, new)
            out = {"first": consistency, "second": new, "consistency_proof": [merkle.b64(h) for h in proof]}
        elif index is None:
            raise fail("give an INDEX, or --consistency OLD_SIZE")
        elif receipt is not None:
            body = anchored_receipt(store, ledger, index)  # with its anchor on chain once one covers the entry
            receipt.write_text(json.dumps(body, indent=2) + "\n", encoding="utf-8")
            console.print(f"wrote the receipt of entry {index} to {receipt}")
            return
        else:
            target = size if size is not None else ledger.checkpoint().size
            proof = ledger.inclusion_proof(index, target)
            out = {
                "index": index,
                "tree_size": target,
                "root": merkle.b64(ledger.root(target)),
                "inclusion_proof": [merkle.b64(h) for h in proof],
            }
        console.print_json(json.dumps(out))


@app.command()
def verify() -> None:
    """Recompute every leaf and node, check every checkpoint; exit 1 naming the first bad index."""
    _know_every_event_type()
    with (
        opened_ledger() as (_, ledger),
        Progress(
            TextColumn("verifying"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("verify", total=ledger.size())
        try:
            report = verify_ledger(ledger, lambda done, total: bar.update(task, completed=done, total=total))
        except VerificationError as exc:
            bar.stop()
            raise fail(str(exc)) from None
    console.print(
        f"ledger OK: {report.size} {'entry' if report.size == 1 else 'entries'}, {report.nodes} nodes, "
        f"{report.checkpoints} checkpoint{'' if report.checkpoints == 1 else 's'}, "
        f"root {merkle.b64(report.root)}"
    )


@app.command("verify-receipt")
def verify_receipt_cmd(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="receipt JSON"),
    key: str = typer.Option(None, help="the log's verifier key (NAME+KEYID+BASE64) to trust instead of the receipt's"),
) -> None:
    """Check a receipt offline: no database, no network."""
    _know_every_event_type()
    try:
        receipt = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise fail(f"{file} is not a JSON receipt: {exc}") from None
    if not isinstance(receipt, dict):
        raise fail(f"{file} holds JSON but not a receipt object")
    try:
        entry = verify_receipt(receipt, trusted_key=key)
    except ReceiptError as exc:
        raise fail(f"{file}: receipt does not verify: {exc}") from None
    console.print(
        f"receipt OK: entry {entry.seq} ({entry.type} by {entry.actor}) is in the log {receipt['origin']} "
        f"of size {receipt['tree_size']}"
    )
    if key is None:
        console.print(f"signed by {receipt['verifier_key']}: compare it with the key the log publishes.")
