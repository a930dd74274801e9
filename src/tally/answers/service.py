"""The one answer path: request -> alias and retrieval -> encode -> validate once -> generate -> citations ->
attribution -> settlement -> result.

`prepare` runs every check before anything is generated (a streamed answer never starts with a 200 and then fails
on its input); `answer` (blocking) and `stream` (asyncio, text as it comes) generate; `finish` cites, attributes and
settles. The HTTP routes, `tally ask` and tests all come through here.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from tally.answers.request import AnswerRequest, AnswerResult, Delta, Generated, Prepared, RagOption
from tally.answers.runtime import Runtime
from tally.config import ATTRIBUTION_MODES, AttributionMode, Settings
from tally.config.errors import ERROR_KINDS, TallyError
from tally.config.logs import note

if TYPE_CHECKING:
    from tally.attribution import AttributionRecord
    from tally.engine import Engine, RequestOutput
    from tally.identity import Principal
    from tally.rag import RetrievedChunk

logger = logging.getLogger(__name__)
CHAT_MAX_TOKENS = 512  # a chat request that names no max_tokens gets what fits, up to this
COMPLETION_MAX_TOKENS = 16  # OpenAI's default for completions


class AnswerError(TallyError):
    """An answer that cannot be given as asked; the kind says why."""


def precheck(settings: Settings, request: AnswerRequest) -> None:
    """The checks that need no model: a CLI runs them before it spends seconds loading the base model."""
    from tally.engine import adapter_registry_path
    from tally.engine.registry import read_registry

    if request.attribution is not None and request.attribution not in ATTRIBUTION_MODES:
        raise AnswerError(
            f"attribution mode {request.attribution!r} is not one of {', '.join(ATTRIBUTION_MODES)}",
            param="attribution",
        )
    model, _ = _alias(settings, request.model, request.rag)
    if model != settings.models.default and model not in read_registry(adapter_registry_path(settings)):
        raise AnswerError(
            f"no model named {model!r}: it is neither the base model ({settings.models.default}) nor a registered "
            "adapter; see `tally adapters list`, add one with `tally adapters add NAME PATH`",
            kind="not_found", param="model", model=model,
        )  # fmt: skip


def _alias(settings: Settings, model: str, rag: RagOption | None) -> tuple[str, RagOption | None]:
    """(the model that answers, the retrieval to do): a model alias from settings names both."""
    alias = settings.rag.aliases.get(model)
    if alias is None:
        return model, rag
    return alias.model, rag or RagOption(datanets=alias.datanets, top_k=alias.top_k)


def engine_of(runtime: Runtime) -> Engine:
    if runtime.engine is None:
        raise AnswerError(
            "The inference engine is not running here: pull the base model (`tally models pull`) and start the "
            "server with `tally serve`.",
            kind="unavailable",
        )
    return runtime.engine


def _serve_registered(runtime: Runtime, engine: Engine, model: str) -> None:
    """Check the model; an adapter published (or `tally adapters add`ed) since the server started is picked up from
    the registry file the factory and the CLI write, so a running server serves it without a restart."""
    from tally.engine import AdapterNotFoundError, adapter_registry_path
    from tally.engine.registry import read_registry

    try:
        engine.check_model(model)
    except AdapterNotFoundError:
        entry = read_registry(adapter_registry_path(runtime.settings)).get(model)
        if entry is None or engine.was_unloaded(model):  # an admin's unload holds until an admin loads it again
            raise
        try:
            engine.add_adapter(entry.name, entry.path, pinned=entry.pinned, load_now=False)
        except TallyError as exc:  # its message names the server's folder: logged here, not sent to the caller
            logger.warning("registered adapter %r cannot be served: %s", model, exc)
            raise AnswerError(
                f"adapter {model!r} is registered but cannot be served; the server log says why",
                kind="unavailable", param="model",
            ) from None  # fmt: skip
        logger.info("serving adapter %r, registered since the server started", model)


def resolve_mode(runtime: Runtime, model: str, requested: str | None) -> AttributionMode:
    """The request's mode, else the model's default; asking for one where attribution is not running fails."""
    if runtime.attributor is None:
        if requested not in (None, "off"):
            raise AnswerError(
                "attribution is not running here: it needs the base model (`tally models pull`, then `tally serve`)",
                kind="unavailable", param="attribution",
            )  # fmt: skip
        return "off"
    return runtime.attributor.mode_for(model, requested)


def prepare(runtime: Runtime, request: AnswerRequest) -> Prepared:
    """Resolve the alias, check the model and options, retrieve (a ledger event), encode and validate once."""
    from tally.engine import SamplingParams
    from tally.rewards import require_credit

    engine = engine_of(runtime)
    if (request.messages is None) == (request.prompt is None):
        raise AnswerError("an answer needs either messages (chat) or a prompt (completion), not both")
    model, rag = _alias(runtime.settings, request.model, request.rag)
    if rag is not None and request.stream:
        raise AnswerError("stream is not supported together with rag; ask without stream", param="stream")
    if rag is not None and request.messages is None:
        raise AnswerError("retrieval needs a chat request (messages)", param="rag")
    _serve_registered(runtime, engine, model)
    mode = resolve_mode(runtime, model, request.attribution)
    payer = request.requester if runtime.settings.rewards.charge_requesters else None
    if payer is not None and runtime.attributor is None:  # nothing would settle the fee: no free paid answers
        raise AnswerError(
            "paid answers need attribution, which is not running here (the base model is missing)", kind="unavailable"
        )
    if payer is not None and mode == "off":
        if request.attribution == "off":  # a paid fee is split by attribution: an unattributed answer cannot be paid
            raise AnswerError(
                "attribution cannot be off for a paid answer: its fee is split among contributors by attribution",
                param="attribution",
            )
        mode = "fast"  # a model whose default is off is still attributed when the requester pays
    if payer is not None and rag is not None:  # retrieval writes a ledger entry: first refuse an account that is dry
        require_credit(runtime.store, runtime.fee_policy, payer.address, 0, request.sampling.max_tokens or 1)
    chunks: list[RetrievedChunk] = []
    question: str | None = None
    messages = request.messages
    if rag is not None and messages is not None:
        question = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        chunks, messages = _retrieve(runtime, request, rag, question)
    prompt = _encode(engine, messages, request.prompt)
    sampling = request.sampling
    default = (
        COMPLETION_MAX_TOKENS
        if request.messages is None
        else max(1, min(CHAT_MAX_TOKENS, engine.config.max_model_len - len(prompt)))
    )
    params = SamplingParams(
        max_tokens=sampling.max_tokens or default, temperature=sampling.temperature, top_p=sampling.top_p,
        seed=sampling.seed, stop=sampling.stop, cache_salt=_cache_salt(request),
        # `fast` attribution of an adapter's answer runs its top layers from the engine's hidden states
        keep_states=mode == "fast" and model != engine.model_name and runtime.attributor is not None,
    )  # fmt: skip
    engine.validate(prompt, params, model)
    hold = None
    if payer is not None:  # the credit, less what answers in progress hold, must cover the most this one can cost
        hold = require_credit(
            runtime.store, runtime.fee_policy, payer.address, len(prompt), params.max_tokens, runtime.credit_holds
        )
    inference_id = request.id or f"ans-{uuid.uuid4().hex}"
    note(model=model, inference=inference_id, attribution=mode, rag=rag is not None)
    return Prepared(request, inference_id, model, prompt, params, mode, chunks, question, hold)


def _cache_salt(request: AnswerRequest) -> str:
    """Prefix caching within one requester only (a shared cache would let a caller time others' prompts); an
    anonymous request shares with nobody."""
    requester = request.requester
    return f"account:{requester.address}" if requester is not None else f"once:{uuid.uuid4().hex}"


def _retrieve(
    runtime: Runtime, request: AnswerRequest, rag: RagOption, question: str
) -> tuple[list[RetrievedChunk], list[dict[str, str]]]:
    from tally.rag import RagSettings, build_rag_messages, retrieve

    if request.requester is None:
        raise AnswerError(
            "retrieval needs to know who asks (only datanets the caller may use for rag are searched): send an API "
            "key, or act as an account (`--as NAME`)",
            kind="unauthenticated",
        )
    if not question.strip():
        raise AnswerError("a rag request needs a user message to retrieve for", param="messages")
    settings = RagSettings.from_settings(runtime.settings)
    with runtime.store.transaction() as s:
        chunks = retrieve(
            s, runtime.ledger, request.requester, rag.datanets, question, rag.top_k or settings.default_top_k,
            rag.mode, settings=settings, refresh=True, embedder=runtime.embedders.get(settings),
            indexes=runtime.rag_indexes,
        )  # fmt: skip
    return chunks, build_rag_messages(question, chunks)


def _encode(engine: Engine, messages: list[dict[str, str]] | None, prompt: str | list[int] | None) -> list[int]:
    if messages is not None:
        try:
            return engine.encode_chat(messages)
        except Exception as exc:  # a template that rejects the roles (no system role, ...)
            raise AnswerError(f"the chat template rejected the messages: {exc}", param="messages") from None
    if isinstance(prompt, str):
        return engine.encode(prompt)
    return list(prompt or [])


class _Collector:
    """Folds the engine's events into one `Generated` (the same for the blocking and the streaming path)."""

    def __init__(self, states_layer: int | None = None) -> None:
        self.states_layer = states_layer  # the engine's, for the states the last event carries
        self.text: list[str] = []
        self.ids: list[int] = []
        self.last: RequestOutput | None = None

    def add(self, out: RequestOutput) -> None:
        self.text.append(out.text)
        self.ids.extend(out.token_ids)
        self.last = out

    def generated(self) -> Generated:
        last = self.last
        if last is None or last.usage is None:
            raise AnswerError("generation ended without a result", kind="internal")
        if last.finish_reason == "error":  # a broken adapter is the request's fault; anything else the server's
            kind = last.error_kind if last.error_kind in ERROR_KINDS else "internal"
            raise AnswerError(
                last.error or "generation failed", kind=kind, param="model" if kind != "internal" else None
            )
        return Generated(
            "".join(self.text), self.ids, last.finish_reason or "stop", last.usage.prompt_tokens,
            last.usage.completion_tokens, last.adapter_id, last.adapter_path, last.states, self.states_layer,
        )  # fmt: skip

    def received(self, prompt_tokens: int) -> Generated:
        """What a client that left early received (every event names the weights serving it)."""
        last = self.last
        return Generated(
            "".join(self.text), self.ids, "cancelled", prompt_tokens, len(self.ids),
            last.adapter_id if last else None, last.adapter_path if last else None,
        )  # fmt: skip


def generate(runtime: Runtime, prepared: Prepared) -> Generated:
    """Blocking generation (the engine thread runs it; the caller waits)."""
    collector = _Collector(engine_of(runtime).states_layer)
    for out in engine_of(runtime).stream_sync(prepared.prompt_ids, prepared.params, prepared.model):
        collector.add(out)
    return collector.generated()


def finish(runtime: Runtime, prepared: Prepared, generated: Generated) -> AnswerResult:
    """Attribution and its fee settled in one transaction, then the citations (measured by the attribution when it
    ran, the model's own markers otherwise); the typed result."""
    text = generated.text
    if prepared.question is not None:
        from tally.rag.answers import check_markers

        text = check_markers(generated.text, len(prepared.chunks)).text
    retrieved = len(prepared.chunks) if prepared.question is not None else None
    result = AnswerResult(
        id=prepared.id, model=prepared.model, text=text, finish_reason=generated.finish_reason,
        prompt_tokens=generated.prompt_tokens, completion_tokens=generated.completion_tokens,
        token_ids=generated.token_ids, adapter_id=generated.adapter_id, retrieved=retrieved,
    )  # fmt: skip
    note(prompt_tokens=generated.prompt_tokens, completion_tokens=generated.completion_tokens)
    # a paid answer the client stopped reading is settled for what it received; a free one only when delivered whole
    paid = prepared.credit_hold is not None
    delivered = (generated.finish_reason in ("stop", "length") or paid) and generated.token_ids
    if prepared.mode != "off" and runtime.attributor is not None and delivered:
        result.record, result.receipt = _attribute(runtime, prepared, generated)
    if prepared.question is not None:
        result.citations = _citations(runtime, prepared, result)
    return result


def _citations(runtime: Runtime, prepared: Prepared, result: AnswerResult) -> list[dict[str, Any]]:
    """The `citations` of a RAG answer: the record's measured ones, or the model's markers when nothing measured."""
    from tally.attribution.citations import citations_from
    from tally.rag.answers import best_quote

    cited = result.record.citations if result.record is not None else []
    if result.record is None:  # attribution off: the markers, unchecked
        cited = citations_from(None, result.text, prepared.chunks, runtime.settings.attribution.citation_min_drop)
    out = []
    for c in cited:
        sentence = result.text[c.sentence[0] : c.sentence[1]]
        out.append({**c.model_dump(mode="json"), "quote": best_quote(sentence, prepared.chunks[c.chunk].text)})
    return out


def _attribute(runtime: Runtime, prepared: Prepared, generated: Generated) -> tuple[AttributionRecord, int]:
    from tally.attribution.service import Answer
    from tally.rewards.settle import settle_answer

    assert runtime.attributor is not None
    requester = prepared.request.requester
    answer = Answer(
        inference_id=prepared.id, model=prepared.model, prompt_ids=prepared.prompt_ids,
        answer_ids=generated.token_ids, adapter_dir=generated.adapter_path, adapter_hash=generated.adapter_id,
        question=prepared.question, chunks=prepared.chunks,
        requested_by=requester.address if requester is not None else None,
        readable=_readable(runtime, requester), states=generated.states, states_layer=generated.states_layer,
    )  # fmt: skip
    start = time.perf_counter()
    attributed = runtime.attributor.attribute(answer, prepared.mode)
    actor = answer.requested_by or "engine"
    charge = runtime.settings.rewards.charge_requesters
    seq = settle_answer(runtime.ledger, attributed, runtime.fee_policy, actor=actor, charge_requester=charge)
    note(attribution_ms=round((time.perf_counter() - start) * 1000, 1), receipt=seq)
    return attributed.record, seq


def _readable(runtime: Runtime, requester: Principal | None) -> frozenset[str]:
    """The datanets whose rows may show up as this requester's evidence (anonymous: the public ones)."""
    from tally.attribution import readable_datanets

    with runtime.store.read() as s:
        return frozenset(readable_datanets(s, requester))


def answer(runtime: Runtime, request: AnswerRequest) -> AnswerResult:
    """The whole path, blocking: for the CLI, scripts and tests."""
    prepared = prepare(runtime, request)
    try:
        return finish(runtime, prepared, generate(runtime, prepared))
    finally:
        runtime.credit_holds.release(prepared.credit_hold)


async def stream(runtime: Runtime, prepared: Prepared) -> AsyncIterator[Delta | AnswerResult]:
    """Text as it is generated (`Delta`), then the `AnswerResult` (citations, attribution, receipt). Leaving early
    (a client gone) cancels the generation: a free answer not delivered whole is not attributed; a paid one is
    settled for the tokens the client received (in a worker thread, since the stream is being torn down)."""
    collector = _Collector(engine_of(runtime).states_layer)
    done = False
    try:
        async for out in engine_of(runtime).stream(prepared.prompt_ids, prepared.params, prepared.model):
            collector.add(out)
            if out.finish_reason == "error":
                break
            if out.text:
                yield Delta(out.text)
        generated = collector.generated()
        done = True
        yield await asyncio.to_thread(finish, runtime, prepared, generated)
    finally:
        if not done and prepared.credit_hold is not None and collector.ids:
            threading.Thread(target=_settle_abandoned, args=(runtime, prepared, collector), daemon=True).start()
        else:
            runtime.credit_holds.release(prepared.credit_hold)


def _settle_abandoned(runtime: Runtime, prepared: Prepared, collector: _Collector) -> None:
    """Charge a paid answer for what its client received before it left; the hold is released either way."""
    try:
        finish(runtime, prepared, collector.received(len(prepared.prompt_ids)))
    except Exception:  # nobody is left to tell: the operator is
        logger.exception("settling abandoned paid answer %s failed", prepared.id)
    finally:
        runtime.credit_holds.release(prepared.credit_hold)


async def answer_async(runtime: Runtime, request: AnswerRequest) -> AnswerResult:
    """The whole path on an asyncio loop: retrieval and attribution run in worker threads."""
    return await complete(runtime, await asyncio.to_thread(prepare, runtime, request))


async def answer_batch_async(runtime: Runtime, requests: list[AnswerRequest]) -> list[AnswerResult]:
    """Several answers (a completions batch): every one is prepared (checked, its credit held) before any is
    generated, so a refusal of the k-th leaves none of the others charged."""
    prepared: list[Prepared] = []
    try:
        for request in requests:
            prepared.append(await asyncio.to_thread(prepare, runtime, request))
    except BaseException:
        for done in prepared:
            release(runtime, done)
        raise
    results = []
    for i, one in enumerate(prepared):
        try:
            results.append(await complete(runtime, one))
        except BaseException:
            for rest in prepared[i + 1 :]:
                release(runtime, rest)
            raise
    return results


async def complete(runtime: Runtime, prepared: Prepared) -> AnswerResult:
    """Generate and finish a prepared answer on the asyncio loop."""
    result: AnswerResult | None = None
    async for event in stream(runtime, prepared):
        if isinstance(event, AnswerResult):
            result = event
    assert result is not None
    return result


def release(runtime: Runtime, prepared: Prepared) -> None:
    """Give back what a prepared answer holds when it will not be generated."""
    runtime.credit_holds.release(prepared.credit_hold)
