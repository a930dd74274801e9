"""`tally ask`: one question to the base model or an adapter, optionally with retrieval and numbered sources."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from tally.cli.common import acting_principal, cli_errors, console, fail, load_cli_settings, opened_ledger
from tally.config import ATTRIBUTION_MODES, Settings

if TYPE_CHECKING:
    from tally.rewards import FeePolicy

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
    """Ask a question; prints the answer and who shaped it. With --rag, the answer cites numbered sources."""
    from tally.engine import EngineError, SamplingParams, build_engine
    from tally.models import ModelError
    from tally.rag import RagSettings, build_rag_messages, postprocess_citations, retrieve

    if attribution is not None and attribution not in ATTRIBUTION_MODES:  # before the answer is generated
        raise fail(f"--attribution {attribution!r} is not one of {', '.join(ATTRIBUTION_MODES)}")
    from tally.rewards import effective_policy

    settings = load_cli_settings()
    _check_model(settings, model)
    with cli_errors():
        policy, _ = effective_policy(settings)  # a bad fee policy fails before the answer, not after
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
        prompt = engine.encode_chat(messages)
        result = engine.generate(prompt, SamplingParams(max_tokens=max_tokens, temperature=0), name)
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
    _attribute(
        settings, engine, name, prompt, result.token_ids, question if rag else None, chunks, attribution, as_, policy
    )


def _attribute(
    settings: Settings, engine: Any, name: str, prompt: list[int], answer_ids: list[int], question: str | None,
    chunks: list[Any], mode: str | None, as_: str | None, policy: FeePolicy,
) -> None:  # fmt: skip
    """Attribute the answer, commit the record and the fee, print the contributor table."""
    from tally.attribution.service import Answer, AttributionError, Attributor, served_adapter
    from tally.models import resolve_model
    from tally.rewards.settle import settle_answer

    with opened_ledger(settings) as (store, ledger), cli_errors():
        attributor = Attributor(settings, store, resolve_model(engine.model_name, settings.models.cache_dir), name)
        try:
            chosen = attributor.mode_for(name, mode)
        except AttributionError as exc:
            raise fail(str(exc)) from None
        if chosen == "off" or not answer_ids:
            return
        requester = None
        if as_:
            with store.read() as s:
                requester = acting_principal(s, as_).address
        adapter_dir, adapter_hash = served_adapter(engine, name)
        answer = Answer(
            inference_id=f"ask-{uuid.uuid4().hex}", model=name, prompt_ids=prompt, answer_ids=answer_ids,
            adapter_dir=adapter_dir, adapter_hash=adapter_hash, question=question, chunks=chunks,
            requested_by=requester,
        )  # fmt: skip
        with console.status(f"attributing ({chosen})"):
            done = attributor.attribute(answer, chosen)
        seq = settle_answer(ledger, done, policy, actor=requester or "cli")
    record = done.record
    table = Table("contributor", "share", "contributions", "evidence", title=f"attribution {record.id} ({chosen})")
    for share in record.shares:
        methods = [m for m, r in record.methods.items() if any(e.contributor == share.account for e in r.top)]
        table.add_row(share.account, f"{share.share:.1%}", str(len(share.contributions)), ", ".join(methods))
    if record.shares:
        console.print(table)
    else:
        console.print(
            f"[dim]attribution {record.id} ({chosen}): no method beat its null baseline, "
            "so no contributor is credited for this answer[/]"
        )
    beat = ", ".join(f"{m} {'yes' if r.beat_null else 'no'}" for m, r in record.methods.items())
    console.print(f"[dim]beat null: {beat}; developer {record.credits.developer or '-'}; ledger entry {seq}[/]")
    console.print(f"[dim]the full record and its receipt: tally attribution show {record.id} --receipt[/]")


def _check_model(settings: Settings, model: str | None) -> None:
    """An unknown model name fails before the base model loads, and says how to add an adapter."""
    from tally.engine.engine import adapter_registry_path
    from tally.engine.registry import read_registry

    if model and model != settings.models.default and model not in read_registry(adapter_registry_path(settings)):
        raise fail(
            f"no model named {model!r}: it is neither the base model ({settings.models.default}) nor a registered "
            "adapter; see `tally adapters list`, add one with `tally adapters add NAME PATH`"
        )
