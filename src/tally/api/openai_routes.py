"""OpenAI-compatible serving routes, plus vLLM-style adapter load/unload and Prometheus `/metrics`.

The routes only shape OpenAI JSON and SSE: every answer goes through `tally.answers` (retrieval, validation,
generation, citations, attribution, settlement). `model` names an adapter or the base model; anything else is a 404
(never a silent fallback to the base model). Streaming is SSE (`data: {...}` chunks, then `data: [DONE]`); a client
that disconnects cancels its request. Non-streamed answers carry the attribution summary in `attribution` and the
record's ledger entry in the `X-Tally-Receipt` header; streamed ones send the summary as a last chunk (no choices)
right before `[DONE]`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from tally import answers
from tally.answers import AnswerRequest, AnswerResult, Delta, RagOption, Runtime, Sampling
from tally.api import policy
from tally.api.errors import ApiError, http_error
from tally.api.state import app_state
from tally.config import AttributionMode
from tally.config.errors import TallyError
from tally.identity import Principal

router = APIRouter(tags=["openai"])
INT32_MAX = 2**31 - 1  # token counts past this are nonsense and would overflow tensor indices


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (user, logit_bias: null, ...)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)  # the engine's context bounds it (a 400 past it)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**63 - 1)  # a 64-bit seed, as OpenAI's
    attribution: AttributionMode | None = None

    def sampling(self, max_tokens: int | None = None) -> Sampling:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return Sampling(max_tokens or self.max_tokens, self.temperature, self.top_p, self.seed, stop)


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    logprobs: bool | None = None
    rag: RagOption | None = None


class LoadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1)
    pinned: bool = False


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)


RECEIPT_HEADER = "X-Tally-Receipt"


def _text_content(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    parts = []
    for part in message.content:
        if part.get("type") != "text":
            raise ApiError(
                400, f"content part type {part.get('type')!r} is not supported (text only)", param="messages"
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


@router.get("/v1/models", dependencies=[Depends(policy.allow("inference"))])
def list_models(rt: Runtime = Depends(app_state)) -> dict[str, Any]:
    engine = answers.engine_of(rt)
    data = [
        {
            "id": engine.model_name,
            "object": "model",
            "created": engine.created,
            "owned_by": "tally",
            "root": engine.model_name,
            "parent": None,
        }
    ]
    for entry in engine.adapters():
        data.append(
            {
                "id": entry.name,
                "object": "model",
                "created": entry.created,
                "owned_by": "tally",
                "root": entry.name,  # never the server path of its directory
                "parent": engine.model_name,
                "adapter_id": entry.adapter_id,
            }
        )
    return {"object": "list", "data": data}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _check_options(body: _Sampling) -> None:
    if getattr(body, "logprobs", None):
        raise ApiError(400, "logprobs are not supported yet", param="logprobs")


def _receipts(results: list[AnswerResult]) -> dict[str, str] | None:
    receipts = [str(r.receipt) for r in results if r.receipt is not None]
    return {RECEIPT_HEADER: ",".join(receipts)} if receipts else None


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest,
    rt: Runtime = Depends(app_state),
    who: Principal | None = Depends(policy.allow("inference")),
) -> JSONResponse | EventSourceResponse:
    _check_options(body)
    if body.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    p = body.prompt
    one = isinstance(p, str) or not p or isinstance(p[0], int)  # one text, or one list of token ids
    prompts: list[str | list[int]] = [p] if one else [str(x) for x in p]  # type: ignore[list-item]
    most = rt.settings.server.max_prompts_per_request
    if len(prompts) > most:
        raise TallyError(
            f"{len(prompts)} prompts in one request; at most {most} (server.max_prompts_per_request)",
            kind="limit", param="prompt", prompts=len(prompts), max_prompts=most,
        )  # fmt: skip
    if body.stream and len(prompts) != 1:
        raise ApiError(400, "streaming takes one prompt", param="prompt")
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    requests = [
        AnswerRequest(
            model=body.model,
            prompt=prompt,
            sampling=body.sampling(),
            attribution=body.attribution,
            requester=who,
            id=rid if len(prompts) == 1 else f"{rid}-{i}",
            stream=body.stream,
        )
        for i, prompt in enumerate(prompts)
    ]
    if body.stream:

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        prepared = await run_in_threadpool(answers.prepare, rt, requests[0])
        return EventSourceResponse(_sse(rt, prepared, chunk, _include_usage(body), None))
    results = await answers.answer_batch_async(rt, requests)
    extra: dict[str, Any] = {}
    summaries = [r.attribution for r in results if r.attribution is not None]
    if summaries:
        extra["attribution"] = summaries[0] if len(prompts) == 1 else summaries
    return JSONResponse(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [
                {"index": i, "text": r.text, "finish_reason": r.finish_reason, "logprobs": None}
                for i, r in enumerate(results)
            ],
            "usage": _usage(sum(r.prompt_tokens for r in results), sum(r.completion_tokens for r in results)),
            **extra,
        },
        headers=_receipts(results),
    )


def _include_usage(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatRequest, rt: Runtime = Depends(app_state), who: Principal | None = Depends(policy.allow("inference"))
) -> JSONResponse | EventSourceResponse:
    _check_options(body)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    request = AnswerRequest(
        model=body.model, messages=[{"role": m.role, "content": _text_content(m)} for m in body.messages],
        sampling=body.sampling(body.max_tokens or body.max_completion_tokens), rag=body.rag,
        attribution=body.attribution, requester=who, id=rid, stream=body.stream,
    )  # fmt: skip
    if body.stream:

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            delta = {"content": text} if finish is None else {}
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        prepared = await run_in_threadpool(answers.prepare, rt, request)
        first = chunk("", None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return EventSourceResponse(_sse(rt, prepared, chunk, _include_usage(body), first))
    result = await answers.answer_async(rt, request)
    extra: dict[str, Any] = {}
    if result.retrieved is not None:
        extra["citations"] = result.citations
    if result.attribution is not None:
        extra["attribution"] = result.attribution
    return JSONResponse(
        {
            **extra,
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": result.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": result.text},
                    "finish_reason": result.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(result.prompt_tokens, result.completion_tokens),
        },
        headers=_receipts([result]),
    )


async def _sse(
    rt: Runtime, prepared: answers.Prepared, chunk: Any, include_usage: bool, first: dict[str, Any] | None
) -> AsyncIterator[str]:
    if first is not None:
        yield json.dumps(first)
    try:
        async for event in answers.stream(rt, prepared):
            if isinstance(event, Delta):
                yield json.dumps(chunk(event.text, None))
                continue
            yield json.dumps(chunk("", event.finish_reason))
            if include_usage:
                final = chunk("", None)
                final["choices"], final["usage"] = [], _usage(event.prompt_tokens, event.completion_tokens)
                yield json.dumps(final)
            if event.attribution is not None:  # the record lands right after the answer: a last chunk carries it
                last = chunk("", None)
                last["choices"], last["attribution"] = [], event.attribution
                yield json.dumps(last)
    except TallyError as exc:  # the response has started: the error goes in the stream
        yield json.dumps(http_error(exc)[1])
    yield "[DONE]"


@router.post("/v1/load_lora_adapter", dependencies=[Depends(policy.allow("admin"))])
async def load_lora_adapter(body: LoadAdapterRequest, rt: Runtime = Depends(app_state)) -> Response:
    engine = answers.engine_of(rt)
    try:
        entry = await run_in_threadpool(engine.add_adapter, body.lora_name, body.lora_path, pinned=body.pinned)
    except TallyError as exc:
        exc.param = exc.param or "lora_path"
        raise
    return JSONResponse(
        {
            "message": f"Success: LoRA adapter '{body.lora_name}' added successfully.",
            "lora_name": entry.name,
            "adapter_id": entry.adapter_id,
        }
    )


@router.post("/v1/unload_lora_adapter", dependencies=[Depends(policy.allow("admin"))])
async def unload_lora_adapter(body: UnloadAdapterRequest, rt: Runtime = Depends(app_state)) -> Response:
    try:
        answers.engine_of(rt).remove_adapter(body.lora_name)
    except TallyError as exc:
        exc.param = "lora_name"
        raise
    return JSONResponse({"message": f"Success: LoRA adapter '{body.lora_name}' removed successfully."})


@router.get("/metrics", dependencies=[Depends(policy.allow("anonymous"))])
def metrics(rt: Runtime = Depends(app_state)) -> Response:
    metrics = answers.engine_of(rt).metrics
    return Response(metrics.render(), media_type=metrics.content_type)
