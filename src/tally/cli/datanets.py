"""`tally datanet ...`: create, contribute, review, snapshot, diff, export, and access requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, fail, load_cli_settings, opened_ledger
from tally.config.errors import TallyError
from tally.datanets import access, review, service, snapshots
from tally.identity import load_local_key

app = typer.Typer(
    help="Datanets: community datasets with signed, licensed, reviewed contributions.", no_args_is_help=True
)
AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address)")


def _print(obj: object) -> None:
    console.print_json(json.dumps(obj, default=lambda o: o.__dict__))


@app.command()
def create(
    name: str,
    kind: str = typer.Option(..., help="instruction | chat | documents"),
    license: str = typer.Option(..., help="SPDX expression, e.g. CC-BY-4.0"),
    use: list[str] = typer.Option(..., "--use", help="permitted use: train, rag, eval, commercial; repeatable"),
    description: str = typer.Option(""),
    tag: list[str] = typer.Option([], "--tag"),
    visibility: str = typer.Option("public", help="public | private"),
    policy: str = typer.Option("owner-reviewed", help="open | owner-reviewed | invite-only"),
    max_upload_bytes: int = typer.Option(None, help="per-upload byte limit (default: settings)"),
    max_rows_per_day: int = typer.Option(None, help="rows per contributor per day (default: settings)"),
    as_: str = AS,
) -> None:
    """Create a datanet owned by the acting account."""
    settings = load_cli_settings()
    with opened_ledger(settings) as (store, ledger), cli_errors(), store.transaction() as s:
        dn = service.create_datanet(
            s, ledger, acting_principal(s, as_), name, kind=kind, license=license, uses=use, description=description,
            tags=tag, visibility=visibility, policy=policy,
            max_upload_bytes=max_upload_bytes or settings.datanets.max_upload_bytes,
            max_rows_per_day=max_rows_per_day or settings.datanets.max_rows_per_day,
        )  # fmt: skip
    _print(dn)


@app.command("list")
def list_(
    search: str = typer.Option("", "--search", help="words the name, description, tags or license must all contain"),
    as_: str = AS,
) -> None:
    """Datanets the acting account may see (public ones, and private ones it owns, joined or was granted)."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        table = Table("name", "kind", "license", "uses", "visibility", "policy", "owner")
        for d in service.search_datanets(s, acting_principal(s, as_), search):
            table.add_row(d.slug, d.kind, d.license, ",".join(d.uses), d.visibility, d.policy, d.owner)
    console.print(table)


@app.command()
def show(name: str, as_: str = AS) -> None:
    """One datanet: its card, license, uses, policy and snapshots (JSON)."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        who = acting_principal(s, as_)
        dn = service.get_datanet(s, who, name)
        snaps = snapshots.list_snapshots(s, who, name)
    _print({**dn.__dict__, "snapshots": [x.__dict__ for x in snaps]})


@app.command("contribute")
def contribute_cmd(
    name: str,
    file: Path = typer.Argument(..., exists=True, dir_okay=False),
    format: str = typer.Option(None, help="alpaca | sharegpt | openai | text | markdown (default: detected)"),
    sign: bool = typer.Option(False, "--sign", help="sign (EIP-712) with the acting account's local key"),
    drop_duplicates: bool = typer.Option(
        False, "--drop-duplicates", help="leave out rows that repeat an earlier line or a row already in the datanet"
    ),
    as_: str = AS,
) -> None:
    """Upload a file of rows (JSONL) or a document (.txt / .md). A file with bad lines is refused whole, and each
    bad line is listed; with --drop-duplicates, repeated rows are left out (each one listed) instead."""
    from tally.datanets import contribute  # near-duplicate detection imports numpy: only this command pays for it

    settings = load_cli_settings()
    data = file.read_bytes()
    with opened_ledger(settings) as (store, ledger), cli_errors(), _each_bad_line(), store.transaction() as s:
        who = acting_principal(s, as_)
        signature = nonce = None
        if sign:
            request = contribute.prepare_signing(
                s, who, name, data, file.name, settings=settings.datanets, chain_id=settings.chain_id,
                format=format, drop_duplicates=drop_duplicates,
            )  # fmt: skip
            nonce = request.nonce
            signature = request.sign(load_local_key(settings.account_keys_dir, who.address))
        result = contribute.contribute(
            s, ledger, who, name, data, file.name, settings=settings.datanets, chain_id=settings.chain_id,
            format=format, signature=signature, nonce=nonce, drop_duplicates=drop_duplicates,
        )  # fmt: skip
    console.print(
        f"contribution {result.id[:12]}: {result.row_count} row{'' if result.row_count == 1 else 's'} "
        f"({result.format}), {result.status}"
        f"{', signed' if result.signed else ''}; ledger entry {result.ledger_seq}"
    )
    for dropped in result.dropped:
        console.print(f"  dropped: line {dropped['line']} {dropped['reason']}")
    for nd in result.near_duplicates:
        console.print(
            f"  near-duplicate: line {nd['line']} resembles row {str(nd['resembles'])[:12]} ({nd['similarity']})"
        )


@contextmanager
def _each_bad_line() -> Iterator[None]:
    """An upload refused for its lines: every bad line on stderr before the error itself."""
    try:
        yield
    except TallyError as exc:
        problems = exc.values.get("problems") or []
        if len(problems) > 1:
            for problem in problems:
                typer.echo(f"  line {problem.get('line')}: {problem.get('problem')}", err=True)
            if exc.values.get("more_problems"):
                typer.echo("  (more lines were not checked)", err=True)
            if all(p.get("duplicate_of_line") or p.get("contribution") for p in problems):
                typer.echo("  every problem is a repeated row: --drop-duplicates leaves them out", err=True)
        raise


@app.command()
def rows(name: str, status: str = typer.Option(None), limit: int = typer.Option(50), as_: str = AS) -> None:
    """Rows with their review state (owners see all; others accepted rows and their own)."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        found = service.list_rows(s, acting_principal(s, as_), name, status=status, limit=limit)
    table = Table("row", "contribution", "status", "line", "near-dup of", "content")
    for r in found:
        table.add_row(
            str(r["row_hash"])[:12], str(r["contribution"])[:12], str(r["status"]), str(r["line"] or ""),
            str(r["near_dup_of"] or "")[:12], json.dumps(r["content"])[:60],
        )  # fmt: skip
    console.print(table)


@app.command("review")
def review_cmd(
    name: str,
    accept: bool = typer.Option(False, "--accept"),
    reject: bool = typer.Option(False, "--reject"),
    contribution: str = typer.Option(None, help="a contribution id (a unique prefix will do)"),
    row: list[str] = typer.Option([], "--row", help="row hash; repeatable"),
    reason: str = typer.Option("", help="required when rejecting"),
    as_: str = AS,
) -> None:
    """Accept or reject a whole contribution or single rows."""
    if accept == reject:
        raise fail("say --accept or --reject")
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        changed = review.review(
            s, ledger, acting_principal(s, as_), name, decision="accept" if accept else "reject", reason=reason,
            contribution=contribution, rows=row or None,
        )  # fmt: skip
    console.print(f"{changed} row{'' if changed == 1 else 's'} {'accepted' if accept else 'rejected'}")


@app.command()
def snapshot(name: str, as_: str = AS) -> None:
    """Freeze the accepted rows into a snapshot whose id is their Merkle root."""
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        snap = snapshots.create_snapshot(s, ledger, acting_principal(s, as_), name)
    _print(snap)


@app.command()
def diff(name: str, old: str, new: str = typer.Argument("latest"), as_: str = AS) -> None:
    """Rows added and removed between two snapshots (id prefix, vN or latest)."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        _print(snapshots.diff_snapshots(s, acting_principal(s, as_), name, old, new))


@app.command()
def export(
    name: str,
    out: Path = typer.Option(..., help="directory for data.jsonl and README.md"),
    snapshot: str = typer.Option("latest", help="snapshot id prefix, vN or latest"),
    as_: str = AS,
) -> None:
    """Write a snapshot as JSONL with a dataset card, loadable by Hugging Face `datasets`."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        path = snapshots.export_snapshot(s, acting_principal(s, as_), name, snapshot, out)
    console.print(f"exported to {path}")


@app.command()
def invite(name: str, address: str, as_: str = AS) -> None:
    """Invite a contributor to an invite-only or private datanet."""
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        service.invite_member(s, ledger, acting_principal(s, as_), name, address)
    console.print(f"invited {address} to {name}")


@app.command("request-access")
def request_access(
    name: str,
    use: list[str] = typer.Option(..., "--use", help="train, rag, eval, commercial, export; repeatable"),
    purpose: str = typer.Option(..., help="what the data is for (kept in the database; the ledger holds a hash)"),
    as_: str = AS,
) -> None:
    """Ask a private datanet's owner for the right to use its data (one pending request per datanet)."""
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        req = access.request_access(s, ledger, acting_principal(s, as_), name, uses=use, purpose=purpose)
    console.print(f"access request {req.id} on {name} is pending")


@app.command()
def requests(name: str, as_: str = AS) -> None:
    """Access requests on a datanet: all of them for its owner, your own otherwise."""
    with opened_ledger() as (store, _), cli_errors(), store.read() as s:
        found = access.list_access_requests(s, acting_principal(s, as_), name)
    table = Table("id", "requester", "uses", "purpose", "status", "reason")
    for r in found:
        table.add_row(str(r.id), r.requester, ",".join(r.uses), r.purpose, r.status, r.reason or "")
    console.print(table)


def _decide(name: str, request_id: int, grant: bool, reason: str, as_: str | None) -> None:
    with opened_ledger() as (store, ledger), cli_errors(), store.transaction() as s:
        req = access.decide_access(s, ledger, acting_principal(s, as_), name, request_id, grant=grant, reason=reason)
    console.print(f"access request {req.id} {req.status}")


@app.command()
def grant(name: str, request_id: int, reason: str = typer.Option(""), as_: str = AS) -> None:
    """Grant an access request (owner): the requester may then use the data for the uses it asked."""
    _decide(name, request_id, True, reason, as_)


@app.command()
def deny(
    name: str, request_id: int, reason: str = typer.Option(..., help="told to the requester"), as_: str = AS
) -> None:
    """Deny an access request (owner), with a reason the requester reads."""
    _decide(name, request_id, False, reason, as_)
