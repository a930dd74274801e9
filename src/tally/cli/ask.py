"""`tally ask`: one question to the base model or an adapter, optionally with retrieval and numbered sources."""

from __future__ import annotations

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, fail, load_cli_settings, opened_ledger

AS = typer.Option(None, "--as", envvar="TALLY_AS", help="account that acts (name or address); needed with --rag")


def ask(
    question: str = typer.Argument(..., help="the question"),
    model: str = typer.Option(None, help="base model or adapter name (default: the base model)"),
    rag: list[str] = typer.Option([], "--rag", help="datanet to retrieve from; repeatable"),
    top_k: int = typer.Option(5, help="sources to retrieve"),
    max_tokens: int = typer.Option(256),
    as_: str = AS,
) -> None:
    """Ask a question; with --rag, the answer cites numbered sources from datanets you may use for RAG."""
    from tally.engine import EngineError, SamplingParams, build_engine
    from tally.models import ModelError
    from tally.rag import RagSettings, build_rag_messages, postprocess_citations, retrieve

    settings = load_cli_settings()
    messages = [{"role": "user", "content": question}]
    chunks: list = []
    if rag:
        with opened_ledger(settings) as (store, ledger), cli_errors(), store.transaction() as s:
            who = acting_principal(s, as_)
            chunks = retrieve(
                s, ledger, who, rag, question, top_k, settings=RagSettings.from_settings(settings), refresh=True
            )
        messages = build_rag_messages(question, chunks)
    try:
        engine = build_engine(settings).start()
    except ModelError as exc:
        raise fail(str(exc)) from None
    try:
        name = model or engine.model_name
        result = engine.generate(
            engine.encode_chat(messages), SamplingParams(max_tokens=max_tokens, temperature=0), name
        )
    except EngineError as exc:
        raise fail(str(exc)) from None
    finally:
        engine.stop()
    text, citations = postprocess_citations(result.text, chunks) if rag else (result.text, [])
    console.print(text.strip(), highlight=False)
    if citations:
        table = Table("n", "datanet", "contributor", "contribution", "quote")
        for c in citations:
            table.add_row(str(c["number"]), c["datanet"], c["contributor"], c["contribution"][:12], c["quote"][:80])
        console.print(table)
    elif rag:
        console.print(f"[dim]no source was cited; {len(chunks)} were retrieved[/]")
