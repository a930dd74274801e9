"""`tally ask`: one question to the base model or an adapter, optionally with retrieval and numbered sources.

It only parses and prints: the answer goes through `tally.answers`, as an HTTP request would.
"""

from __future__ import annotations

import uuid

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, fail, load_cli_settings
from tally.config import ATTRIBUTION_MODES

AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address); needed with --rag")


def ask(
    question: str = typer.Argument(..., help="the question"),
    model: str = typer.Option(None, help="base model or adapter name (default: the base model)"),
    rag: list[str] = typer.Option([], "--rag", help="datanet to retrieve from; repeatable"),
    top_k: int = typer.Option(5, help="sources to retrieve"),
    max_tokens: int = typer.Option(256),
    attribution: str = typer.Option(None, help="off | fast | full (default: the model's, from settings)"),
    as_: str = AS,
) -> None:
    """Ask a question; prints the answer and who shaped it. With --rag, each sentence cites the sources measured to
    carry it."""
    from tally.answers import AnswerRequest, RagOption, Sampling, answer, build_runtime, precheck
    from tally.identity import list_accounts

    if attribution is not None and attribution not in ATTRIBUTION_MODES:  # a flag's value, named as the flag
        raise fail(f"--attribution {attribution!r} is not one of {', '.join(ATTRIBUTION_MODES)}")
    settings = load_cli_settings()
    request = AnswerRequest(
        model=model or settings.models.default, messages=[{"role": "user", "content": question}],
        sampling=Sampling(max_tokens=max_tokens, temperature=0), attribution=attribution,  # type: ignore[arg-type]
        rag=RagOption(datanets=rag, top_k=top_k) if rag else None, id=f"ask-{uuid.uuid4().hex}",
    )  # fmt: skip
    with cli_errors():
        precheck(settings, request)  # before seconds go into loading the base model
        runtime = build_runtime(settings, with_engine=True)
    try:
        with cli_errors():
            if runtime.engine is None:
                from tally.answers import engine_of

                engine_of(runtime)  # says how to get the base model
            if as_ or rag:
                with runtime.store.read() as s:
                    request.requester = acting_principal(s, as_)
            runtime.start()
            with console.status("answering"):
                result = answer(runtime, request)
            with runtime.store.read() as s:  # shares name accounts by address: show their names beside them
                names = {a.address: a.name for a in list_accounts(s)}
    finally:
        runtime.close()
    console.print(result.text.strip(), highlight=False)
    if result.citations:
        table = Table("sentence", "source", "datanet", "contributor", "drop (nats)", "marker", title="citations")
        for c in result.citations:
            sentence = result.text[c["sentence"][0] : c["sentence"][1]]
            drop = "-" if c["drop"] is None else f"{c['drop']:.2f}"
            if not c["marker"]:
                mark = "" if c["measured"] else "-"
            elif c["marker_agrees"] is None:
                mark = "written, not checked"
            else:
                mark = "agrees" if c["marker_agrees"] else "DISAGREES: not measured"
            supported = "" if c["measured"] is not False else " (not supported)"
            table.add_row(
                f"{c['sentence'][0]}-{c['sentence'][1]} {sentence[:60]}", f"[{c['source']}]{supported}",
                c["datanet"], c["contributor"], drop, mark,
            )  # fmt: skip
        console.print(table)
    elif result.retrieved is not None:
        console.print(f"[dim]no sentence cites a source; {result.retrieved} were retrieved[/]")
    record = result.record
    if record is None:
        return
    table = Table("contributor", "share", "contributions", "evidence", title=f"attribution {record.id} ({record.mode})")
    for share in record.shares:
        methods = [m for m, r in record.methods.items() if any(e.contributor == share.account for e in r.top)]
        who = f"{names[share.account]} ({share.account})" if share.account in names else share.account
        table.add_row(who, f"{share.share:.1%}", str(len(share.contributions)), ", ".join(methods))
    if record.shares:
        console.print(table)
    else:
        console.print(
            f"[dim]attribution {record.id} ({record.mode}): no method beat its null baseline, "
            "so no contributor is credited for this answer[/]"
        )
    beat = ", ".join(f"{m} {'yes' if r.beat_null else 'no'}" for m, r in record.methods.items())
    console.print(
        f"[dim]beat null: {beat}; developer {record.credits.developer or '-'}; ledger entry {result.receipt}[/]"
    )
    console.print(f"[dim]the full record and its receipt: tally attribution show {record.id} --receipt[/]")
