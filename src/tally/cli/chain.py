"""`tally chain ...`: the ledger anchored on an EVM chain (the embedded one by default, any node by `chain.url`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

from tally.cli.common import cli_errors, console, fail, load_cli_settings, opened_ledger

app = typer.Typer(help="Anchor the ledger on an EVM chain and check the anchors.", no_args_is_help=True)


@contextmanager
def opened_chain() -> Iterator[tuple[object, object]]:
    from tally.chain import Chain

    settings = load_cli_settings()
    with opened_ledger(settings) as (store, ledger):
        yield Chain(settings, store), ledger


@app.command()
def status() -> None:
    """Which chain, the contracts (deployed on the embedded chain's first use), the operator, the anchored size
    and any transaction still pending."""
    from tally.chain import chain_status

    with cli_errors(), opened_chain() as (chain, ledger):
        console.print_json(json.dumps(chain_status(chain, ledger)))  # type: ignore[arg-type]


@app.command()
def anchors(limit: int = typer.Option(20, min=1, help="how many, newest first")) -> None:
    """The log's anchors recorded here (tree size, root, transaction, block), newest first."""
    from tally.chain import recorded_anchors

    with cli_errors(), opened_ledger() as (store, ledger):
        found = recorded_anchors(store, ledger, limit=limit)
    for a in found:
        console.print(f"size {a['size']} root {a['root']} tx {a['transaction']} block {a['block_number']} "
                      f"({a['network']}, {a['anchored_at']})", highlight=False)  # fmt: skip
    if not found:
        console.print("no anchor recorded yet")


@app.command()
def deploy() -> None:
    """Deploy the contracts not yet on this chain (LedgerAnchor, RewardToken, RewardDistributor,
    ContributionVerifier) and print their addresses: put them in tally.toml's [chain] for a real chain."""
    with cli_errors(), opened_chain() as (chain, _), chain.connect() as w3:  # type: ignore[attr-defined]
        console.print_json(json.dumps(chain.deploy(w3)))  # type: ignore[attr-defined]


@app.command()
def anchor() -> None:
    """Anchor the log's head: sign its checkpoint and commit (log id, size, root) on chain, unless already there."""
    from tally.chain import anchor_head

    with cli_errors(), opened_chain() as (chain, ledger):
        outcome = anchor_head(chain, ledger)  # type: ignore[arg-type]
    if outcome.anchor is None:
        console.print(f"already anchored: the chain holds size {outcome.anchored_size} (log size {outcome.size})",
                      highlight=False)  # fmt: skip
        return
    a = outcome.anchor
    console.print(f"anchored size {a.size} root {a.root} in transaction {a.tx_hash} (block {a.block_number}, "
                  f"{a.gas_used} gas)", highlight=False)  # fmt: skip


@app.command()
def verify(as_json: bool = typer.Option(False, "--json", help="print the report as JSON")) -> None:
    """Check every anchor on chain against the local log (the root at each anchored size) and each consecutive
    pair of anchors with a consistency proof. Exits non-zero naming both sizes and roots at the first divergence."""
    from tally.chain import verify_anchors

    with cli_errors(), opened_chain() as (chain, ledger):
        report = verify_anchors(chain, ledger)  # type: ignore[arg-type]
    if as_json:
        console.print_json(json.dumps(report.as_json()))
        return
    latest = f"; newest at size {report.anchors[-1].size}" if report.anchors else ""
    console.print(f"OK: {len(report.anchors)} anchors match the local log of {report.log_size} entries{latest}; "
                  f"{report.unanchored} entries not yet anchored", highlight=False)  # fmt: skip


@app.command("verify-receipt")
def verify_receipt_cmd(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="receipt JSON file"),
    key: str = typer.Option(None, "--key", help="the log's verifier key to trust (default: the receipt's own)"),
) -> None:
    """Check a receipt offline and its anchor against the configured chain."""
    from tally.chain import check_receipt_anchor
    from tally.ledger import ReceiptError, verify_receipt

    try:
        receipt = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: not a JSON receipt: {exc}") from None
    try:
        entry = verify_receipt(receipt, key)
    except ReceiptError as exc:
        raise fail(f"{path}: {exc} ({exc.reason})") from None
    with cli_errors(), opened_chain() as (chain, _), chain.connect() as w3:  # type: ignore[attr-defined]
        anchored = check_receipt_anchor(receipt, w3)
    console.print(f"OK: entry {entry.seq} is in the log at size {anchored['tree_size']}, anchored on chain "
                  f"{anchored['chain_id']} in block {anchored['block_number']} ({anchored['confirmations']} "
                  "confirmations)", highlight=False)  # fmt: skip
