"""OpenAI-compatible serving routes over the engine (`request.app.state.engine`), plus vLLM-style adapter
load/unload and Prometheus `/metrics`.

`model` names an adapter or the base model; anything else is a 404 (never a silent fallback to the base model).
Streaming is SSE (`data: {...}` chunks, then `data: [DONE]`); a client that disconnects cancels its request.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from tally.api import attribution_answers, rag_answers
from tally.api.auth import require
from tally.api.errors import ApiError
from tally.api.rag_answers import RagOption
from tally.attribution.service import AttributionError
from tally.config import AttributionMode
from tally.engine import (
    AdapterNotFoundError,
    AdapterValidationError,
    Engine,
    EngineClosedError,
    RequestOutput,
    RequestValidationError,
    SamplingParams,
)
from tally.engine.metrics import CONTENT_TYPE

router = APIRouter(tags=["openai"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # clients send fields we do not use (user, logit_bias: null, ...)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    attribution: AttributionMode | None = None

    def params(self, default_max: int) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(
            max_tokens=self.max_tokens or default_max,
            temperature=self.temperature,
            top_p=self.top_p,
            seed=self.seed,
            stop=stop,
        )


class CompletionRequest(_Sampling):
    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[dict[str, Any]] | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    rag: RagOption | None = None


class LoadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1, max_length=200)
    lora_path: str = Field(min_length=1)
    pinned: bool = False


class UnloadAdapterRequest(_Body):
    lora_name: str = Field(min_length=1)


def _engine(request: Request) -> Engine:
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise ApiError(
            503,
            "The inference engine is not running on this server: pull the base model (`tally models pull`) "
            "and start it with `tally serve`.",
            type_="server_error",
        )
    return engine


def _engine_error(exc: Exception, param: str | None = None) -> ApiError:
    if isinstance(exc, AdapterNotFoundError):
        return ApiError(404, str(exc), type_="not_found_error", param=param or "model")
    if isinstance(exc, EngineClosedError):
        return ApiError(503, str(exc), type_="server_error")
    return ApiError(400, str(exc), param=param)


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


@router.get("/v1/models")
def list_models(request: Request) -> dict[str, Any]:
    engine = _engine(request)
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
                "root": str(entry.path),
                "parent": engine.model_name,
                "adapter_id": entry.adapter_id,
            }
        )
    return {"object": "list", "data": data}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def _collect(
    engine: Engine, prompt: list[int], params: SamplingParams, model: str
) -> tuple[str, str, int, int, list[int]]:
    text: list[str] = []
    ids: list[int] = []
    last: RequestOutput | None = None
    try:
        async for out in engine.stream(prompt, params, model):
            text.append(out.text)
            ids.extend(out.token_ids)
            last = out
    except (AdapterNotFoundError, RequestValidationError, EngineClosedError) as exc:  # unloaded in between
        raise _engine_error(exc) from None
    assert last is not None and last.usage is not None
    if last.finish_reason == "error":
        raise ApiError(500, last.error or "generation failed", type_="server_error")
    return "".join(text), last.finish_reason or "stop", last.usage.prompt_tokens, last.usage.completion_tokens, ids


def _prompts(engine: Engine, body: CompletionRequest) -> list[list[int]]:
    p = body.prompt
    if isinstance(p, str):
        return [engine.encode(p)]
    if p and all(isinstance(x, int) for x in p):
        return [list(p)]  # type: ignore[arg-type]
    return [engine.encode(str(x)) for x in p]


def _check(engine: Engine, body: _Sampling) -> None:
    try:
        engine.check_model(body.model)
    except AdapterNotFoundError as exc:
        raise _engine_error(exc) from None
    if getattr(body, "logprobs", None):
        raise ApiError(400, "logprobs are not supported yet", param="logprobs")


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> JSONResponse | EventSourceResponse:
    engine = _engine(request)
    _check(engine, body)
    if body.echo:
        raise ApiError(400, "echo is not supported", param="echo")
    prompts = _prompts(engine, body)
    try:
        params = body.params(default_max=16)
    except RequestValidationError as exc:
        raise _engine_error(exc) from None
    rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
    mode = attribution_answers.resolve_mode(request, body.model, body.attribution)
    if body.stream:
        if len(prompts) != 1:
            raise ApiError(400, "streaming takes one prompt", param="prompt")
        _validate(engine, prompts[0], params)
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        attribute = _attribution_step(request, rid, body.model, mode, prompts[0])
        return EventSourceResponse(_sse(engine, prompts[0], params, body.model, chunk, include_usage, None, attribute))
    choices, prompt_tokens, completion_tokens = [], 0, 0
    summaries, receipts = [], []
    for i, prompt in enumerate(prompts):
        _validate(engine, prompt, params)
        text, finish, p, c, ids = await _collect(engine, prompt, params, body.model)
        choices.append({"index": i, "text": text, "finish_reason": finish, "logprobs": None})
        prompt_tokens, completion_tokens = prompt_tokens + p, completion_tokens + c
        done = await _attribution_step(request, rid if len(prompts) == 1 else f"{rid}-{i}", body.model, mode, prompt)(
            ids
        )
        if done is not None:
            summaries.append(done[0])
            receipts.append(str(done[1]))
    extra: dict[str, Any] = {}
    if summaries:
        extra["attribution"] = summaries[0] if len(prompts) == 1 else summaries
    return JSONResponse(
        {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
            **extra,
        },
        headers={attribution_answers.RECEIPT_HEADER: ",".join(receipts)} if receipts else None,
    )


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatRequest, request: Request) -> JSONResponse | EventSourceResponse:
    engine = _engine(request)
    rag = rag_answers.resolve_alias(request, body)
    _check(engine, body)
    messages = [{"role": m.role, "content": _text_content(m)} for m in body.messages]
    chunks: list[Any] = []
    if rag is not None:
        chunks, messages = await rag_answers.retrieve_for(request, body, rag, messages)
    try:
        prompt = engine.encode_chat(messages)
    except Exception as exc:  # a template that rejects the roles (no system role, ...)
        raise ApiError(400, f"the chat template rejected the messages: {exc}", param="messages") from None
    if body.max_completion_tokens and not body.max_tokens:
        body.max_tokens = body.max_completion_tokens
    try:
        params = body.params(default_max=max(1, min(512, engine.config.max_model_len - len(prompt))))
    except RequestValidationError as exc:
        raise _engine_error(exc) from None
    _validate(engine, prompt, params)
    rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    mode = attribution_answers.resolve_mode(request, body.model, body.attribution)
    question = next((_text_content(m) for m in reversed(body.messages) if m.role == "user"), None) if rag else None
    attribute = _attribution_step(request, rid, body.model, mode, prompt, question, chunks)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            delta = {"content": text} if finish is None else {}
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        first = chunk("", None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return EventSourceResponse(_sse(engine, prompt, params, body.model, chunk, include_usage, first, attribute))
    text, finish, p, c, ids = await _collect(engine, prompt, params, body.model)
    extra: dict[str, Any] = {}
    if rag is not None:
        text, extra["citations"] = rag_answers.cite(text, chunks)
    done = await attribute(ids)
    headers = None
    if done is not None:
        extra["attribution"], headers = done[0], {attribution_answers.RECEIPT_HEADER: str(done[1])}
    return JSONResponse(
        {
            **extra,
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": _usage(p, c),
        },
        headers=headers,
    )


Attribute = Callable[[list[int]], Awaitable[tuple[dict[str, Any], int] | None]]


def _attribution_step(
    request: Request,
    rid: str,
    model: str,
    mode: str,
    prompt: list[int],
    question: str | None = None,
    chunks: list[Any] | None = None,
) -> Attribute:
    """What runs once the answer's token ids are known: the summary and ledger entry of its record, or None."""

    async def run(answer_ids: list[int]) -> tuple[dict[str, Any], int] | None:
        try:
            done = await attribution_answers.attribute_answer(
                request, inference_id=rid, model=model, mode=mode, prompt_ids=prompt, answer_ids=answer_ids,
                question=question, chunks=chunks,
            )  # fmt: skip
        except AttributionError as exc:
            raise ApiError(400, str(exc), param="attribution") from None
        return None if done is None else (attribution_answers.summary(*done), done[1])

    return run


def _validate(engine: Engine, prompt: list[int], params: SamplingParams) -> None:
    """The checks `submit` makes, before a 200 streaming response has started (errors must be real 4xx)."""
    if not prompt:
        raise ApiError(400, "the prompt is empty", param="prompt")
    if len(prompt) + params.max_tokens > engine.config.max_model_len:
        raise ApiError(
            400,
            f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's context of "
            f"{engine.config.max_model_len} tokens",
            param="max_tokens",
        )


async def _sse(
    engine: Engine,
    prompt: list[int],
    params: SamplingParams,
    model: str,
    chunk: Any,
    include_usage: bool,
    first: dict[str, Any] | None,
    attribute: Attribute | None = None,
) -> AsyncIterator[str]:
    if first is not None:
        yield json.dumps(first)
    ids: list[int] = []
    try:
        async for out in engine.stream(prompt, params, model):
            ids.extend(out.token_ids)
            if out.finish_reason == "error":
                yield json.dumps(
                    {
                        "error": {
                            "message": out.error or "generation failed",
                            "type": "server_error",
                            "param": None,
                            "code": None,
                        }
                    }
                )
                break
            if out.text:
                yield json.dumps(chunk(out.text, None))
            if out.finish_reason is not None:
                yield json.dumps(chunk("", out.finish_reason))
                if include_usage and out.usage is not None:
                    final = chunk("", None)
                    final["choices"] = []
                    final["usage"] = _usage(out.usage.prompt_tokens, out.usage.completion_tokens)
                    yield json.dumps(final)
                if attribute is not None and out.finish_reason in ("stop", "length"):
                    done = await attribute(ids)
                    if done is not None:  # the record lands right after the answer: a last chunk carries it
                        last = chunk("", None)
                        last["choices"], last["attribution"] = [], done[0]
                        yield json.dumps(last)
    except (AdapterNotFoundError, RequestValidationError, EngineClosedError) as exc:  # unloaded in between
        yield json.dumps({"error": {"message": str(exc), "type": "invalid_request_error", "param": None, "code": None}})
    yield "[DONE]"


@router.post("/v1/load_lora_adapter", dependencies=[Depends(require("admin"))])
async def load_lora_adapter(body: LoadAdapterRequest, request: Request) -> Response:
    engine = _engine(request)
    try:
        entry = await run_in_threadpool(engine.add_adapter, body.lora_name, body.lora_path, pinned=body.pinned)
    except (AdapterValidationError, RequestValidationError) as exc:
        raise _engine_error(exc, param="lora_path") from None
    return JSONResponse(
        {
            "message": f"Success: LoRA adapter '{body.lora_name}' added successfully.",
            "lora_name": entry.name,
            "adapter_id": entry.adapter_id,
        }
    )


@router.post("/v1/unload_lora_adapter", dependencies=[Depends(require("admin"))])
async def unload_lora_adapter(body: UnloadAdapterRequest, request: Request) -> Response:
    engine = _engine(request)
    try:
        engine.remove_adapter(body.lora_name)
    except AdapterNotFoundError as exc:
        raise _engine_error(exc, param="lora_name") from None
    return JSONResponse({"message": f"Success: LoRA adapter '{body.lora_name}' removed successfully."})


@router.get("/metrics")
def metrics(request: Request) -> Response:
    return Response(_engine(request).metrics.render(), media_type=CONTENT_TYPE)
