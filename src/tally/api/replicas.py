"""Scale-out: `tally serve --replicas N` runs N engine replicas behind one HTTP ingress, on Ray Serve.

Each replica is a whole Tally app (its own engine) in its own process, over the same data directory and database:
writes take the database's write lock, so the ledger's appends stay one at a time across processes. The process
that runs `tally serve` migrates the database, anchors and starts the factory workers; replicas do none of these.

The ingress reads `model` from a completion's JSON body and calls the replicas with it as Ray's multiplexed model
id, so the requests for an adapter go to a replica that already holds it. A replica that dies before it answered
gets the request sent again to another (`server.replica_retries` times); once the first bytes went to the client a
failure cuts the response, as it would in one process. A stopping replica takes no new requests and finishes the
ones in flight (`server.replica_drain_s`). Every response names its replica in the `x-tally-replica` header.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any, cast

import ray
from ray import serve
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from tally.api.app import create_app
from tally.api.errors import error_body
from tally.api.limits import body_cap
from tally.config import Settings, apply_server_process_settings
from tally.config.errors import TallyError
from tally.config.logs import configure_logging

logger = logging.getLogger(__name__)
APP_NAME = "tally"
REPLICA_HEADER = "x-tally-replica"
MODEL_PATHS = frozenset({"/v1/completions", "/v1/chat/completions"})  # the routes whose body names an adapter
# Loading or unloading through one replica's route would change that replica only: refused, saying what works
ONE_PROCESS_PATHS = frozenset({"/v1/load_lora_adapter", "/v1/unload_lora_adapter"})
ONE_PROCESS_MESSAGE = (
    "with server.replicas > 1 adapters are not loaded or unloaded through the API: register one with `tally adapters "
    "add NAME PATH` (or publish it from the factory) and every replica serves it from its first request"
)
# How many adapters a replica reports as held (Ray fixes this when the class is defined): the engine's default
# adapter slots. A replica asked for more still serves them; routing just prefers it for the latest ones.
ADAPTERS_PER_REPLICA = 16
# The most KV cache rows an engine sizes itself (tally.engine.sizing.AUTO_MAX_SEQS, which a test keeps equal): with
# engine.max_num_seqs at 0 a replica may take that many requests at once, so none of its rows goes unused.
AUTO_SEQS_CEILING = 64
# What of the ingress's ASGI scope a replica's app needs (the rest is Ray's and does not cross processes).
SCOPE_KEYS = (
    "type", "asgi", "http_version", "method", "scheme", "path", "raw_path", "query_string", "root_path", "headers",
    "client", "server",
)  # fmt: skip
REPLICA_DIED = (RayActorError, ActorUnavailableError)  # the replica's process is gone or unreachable
# Ray's own lines: warnings only, no access log (each replica writes Tally's request log, with the request id)
SERVE_LOGS = {"log_level": "WARNING", "enable_access_log": False}


class ReplicaError(TallyError):
    kind = "unavailable"


class TallyReplica:
    """One Tally app with its own engine, answering the ASGI requests the ingress forwards."""

    async def __init__(self, settings_json: str) -> None:  # type: ignore[misc]  # Ray awaits an async __init__
        settings = Settings.model_validate_json(settings_json)
        configure_logging(settings.log.level, settings.log.format)  # Tally's request log, as in one process
        for warning in apply_server_process_settings(settings.server):  # as `tally serve` (cli/main.py)
            logger.warning(warning)
        context = serve.get_replica_context()
        self.name = context.replica_id.unique_id
        self.app = create_app(settings, with_engine=True, anchoring=False)
        self._lifespan = self.app.router.lifespan_context(self.app)
        await self._lifespan.__aenter__()  # builds the runtime and starts the engine, as uvicorn would

    async def __del__(self) -> None:
        # Serve calls this after the requests in flight finished (or replica_drain_s passed)
        if hasattr(self, "_lifespan"):  # not when __init__ failed
            await self._lifespan.__aexit__(None, None, None)

    @serve.multiplexed(max_num_models_per_replica=ADAPTERS_PER_REPLICA)
    async def hold(self, model: str) -> str:
        """Marks `model` as held here, for routing; the engine loads an adapter's weights on its first request."""
        return model

    async def handle(self, scope: dict[str, Any], body: bytes) -> AsyncIterator[Message]:
        """Run one request through the app, yielding its ASGI messages as the app sends them (body messages that
        wait here together go as one, see `coalesce`)."""
        model = serve.get_multiplexed_model_id()
        if model:
            await self.hold(model)
        messages: asyncio.Queue[Message | None] = asyncio.Queue()
        gone = asyncio.Event()  # the ingress stopped listening: the app sees a disconnect
        body_sent = False

        async def receive() -> Message:
            nonlocal body_sent
            if not body_sent:
                body_sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (REPLICA_HEADER.encode(), self.name.encode())]
                message = {**message, "headers": headers}
            await messages.put(message)

        task = asyncio.create_task(self._run({**scope, "state": {}}, receive, send, messages))
        try:
            ended = False
            while not ended:
                batch = [await messages.get()]
                while batch[-1] is not None and not messages.empty():
                    batch.append(messages.get_nowait())
                ended = batch[-1] is None
                for message in coalesce([m for m in batch if m is not None]):
                    yield message
        finally:
            gone.set()
            if not task.done():
                task.cancel()

    async def _run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        messages: asyncio.Queue[Message | None],
    ) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception:  # the app already answered 500 where it could; the ingress answers where it could not
            logger.exception("request %s %s failed in replica %s", scope.get("method"), scope.get("path"), self.name)
        finally:
            await messages.put(None)


def coalesce(messages: list[Message]) -> list[Message]:
    """`messages` with each run of body messages joined into one (their bytes in order, the last one's `more_body`).
    Each yielded message is one item Ray carries from the replica to the ingress: what the app sent before `handle`
    got to run again (the SSE chunks of a stream, while the replica's event loop was busy) goes as one item."""
    out: list[Message] = []
    run: list[Message] = []

    def flush() -> None:
        if run:
            body = b"".join(m.get("body", b"") for m in run)
            out.append({"type": "http.response.body", "body": body, "more_body": run[-1].get("more_body", False)})
            run.clear()

    for message in messages:
        if message["type"] == "http.response.body":
            run.append(message)
        else:
            flush()
            out.append(message)
    flush()
    return out


class TallyIngress:
    """The HTTP door: reads the body, picks the multiplexed id, forwards to a replica and relays its answer."""

    def __init__(self, replicas: DeploymentHandle, settings_json: str) -> None:
        self.settings = Settings.model_validate_json(settings_json)
        self.replicas = replicas

    async def __call__(self, request: Request) -> Response:
        if request.url.path in ONE_PROCESS_PATHS:
            return _error(409, ONE_PROCESS_MESSAGE, "invalid_request_error")
        body = await _read_capped(request, body_cap(self.settings, request.url.path))
        scope = {key: request.scope[key] for key in SCOPE_KEYS if key in request.scope}
        model = _held_model(self.settings, request, body)
        handle = self.replicas.options(method_name="handle", stream=True, multiplexed_model_id=model)
        failure: Exception | None = None
        for attempt in range(self.settings.server.replica_retries + 1):
            stream = cast(DeploymentResponseGenerator, handle.remote(scope, body))
            try:
                start = await anext(stream)
                first = await anext(stream) if start["type"] == "http.response.start" else start
            except REPLICA_DIED as exc:
                failure = exc
                logger.warning("replica died before answering %s (attempt %d): %s", request.url.path, attempt + 1, exc)
                continue
            except StopAsyncIteration:
                return _error(500, "the replica ended the request without an answer")
            except BackPressureError:
                waiting = self.settings.engine.max_waiting
                busy = f"all replicas are busy and {waiting} requests wait (engine.max_waiting); retry shortly"
                return _error(503, busy, headers={"Retry-After": "1"})
            return _relay(start, first, stream)
        logger.error("no replica answered %s: %s", request.url.path, failure)  # Ray's text names hosts: logged only
        attempts = self.settings.server.replica_retries + 1
        gone = f"no replica answered after {attempts} attempts; retry shortly"
        return _error(503, gone, headers={"Retry-After": "1"})


def _held_model(settings: Settings, request: Request, body: bytes) -> str:
    """The multiplexed id: the adapter a completion asks for (a RAG alias's own model). "" when there is none to
    prefer a replica for: the base model (every replica has it), other routes, a body that names no model (the
    replica's app then answers it as it would any other)."""
    if request.method != "POST" or request.url.path not in MODEL_PATHS:
        return ""
    try:
        model = json.loads(body).get("model")
    except (ValueError, AttributeError):
        return ""
    if not isinstance(model, str):
        return ""
    alias = settings.rag.aliases.get(model)
    model = alias.model if alias is not None else model
    return "" if model == settings.models.default else model


async def _read_capped(request: Request, cap: int) -> bytes:
    """The body, up to one byte past `cap`: the replica's limit middleware then refuses it (413) as it always does."""
    chunks, size, more = [], 0, True
    while more and size <= cap:
        message = await request.receive()
        if message["type"] != "http.request":  # the client left: the replica sees what arrived, then the end
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        more = message.get("more_body", False)
    return b"".join(chunks)[: cap + 1]


def _relay(start: dict[str, Any], first: dict[str, Any], rest: AsyncIterator[dict[str, Any]]) -> Response:
    """The replica's answer as the ingress's: whole when it came in one piece, else streamed as it comes."""
    if not first.get("more_body", False):
        response = Response(first.get("body", b""), status_code=start["status"])
    else:

        async def chunks() -> AsyncIterator[bytes]:
            yield first.get("body", b"")
            async for message in rest:
                if message["type"] == "http.response.body":
                    yield message.get("body", b"")

        response = StreamingResponse(chunks(), status_code=start["status"])
    # as sent, repeats included; but x-request-id, which Ray's proxy adds itself (the same id: it passed it on)
    response.raw_headers = [(bytes(k), bytes(v)) for k, v in start.get("headers", []) if bytes(k) != b"x-request-id"]
    return response


def _error(status: int, message: str, type_: str = "server_error", headers: dict[str, str] | None = None) -> Response:
    body = error_body(message, type_)
    return Response(json.dumps(body), status_code=status, media_type="application/json", headers=headers)


def serve_replicas(settings: Settings, host: str, port: int) -> None:
    """Start (or join) a Ray cluster, deploy the ingress and `server.replicas` replicas on host:port, and serve until
    SIGINT or SIGTERM; then stop taking requests, let the replicas finish theirs, and leave Ray."""
    server = settings.server
    init_ray(server.ray_address)
    try:
        if server.ray_address is None:
            cpus = int(ray.cluster_resources().get("CPU", 0))
            if server.replicas * server.replica_threads > cpus:
                raise ReplicaError(
                    f"server.replicas ({server.replicas}) x server.replica_threads ({server.replica_threads}) needs "
                    f"{server.replicas * server.replica_threads} CPUs; this machine has {cpus}",
                    kind="limit",
                    param="server.replicas",
                )
        # This process starts the app without an engine and serves nothing with it: its start migrates the database
        # and makes the ledger's and the studio's keys before any replica opens them, and it alone anchors.
        app, loop = create_app(settings, anchoring=True), asyncio.new_event_loop()
        lifespan = app.router.lifespan_context(app)
        loop.run_until_complete(lifespan.__aenter__())
        try:
            serve.start(http_options={"host": host, "port": port}, logging_config=SERVE_LOGS)
            serve.run(build_app(settings), name=APP_NAME, route_prefix="/")
            _wait_for_signal()
            serve.delete(APP_NAME)  # replicas drain: requests in flight finish, new ones are refused
        finally:
            loop.run_until_complete(lifespan.__aexit__(None, None, None))
            loop.close()
    finally:
        serve.shutdown()
        ray.shutdown()


def init_ray(address: str | None, **options: Any) -> None:
    """Join the cluster at `address`, or start a local one (the machine's CPUs unless `options` say otherwise):
    dashboard off, Ray's warnings only, and no usage statistics sent anywhere unless the environment asks for them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **options)


def build_app(settings: Settings) -> Any:
    """The Serve application: the ingress over `server.replicas` replicas with `server.replica_threads` each."""
    server, engine = settings.server, settings.engine
    engine = engine.model_copy(update={"threads": server.replica_threads})
    replica_settings = settings.model_copy(update={"engine": engine}).model_dump_json()
    # With engine.max_num_seqs at 0 each replica sizes its own KV cache; it is then at most AUTO_SEQS_CEILING rows
    rows = engine.max_num_seqs or AUTO_SEQS_CEILING
    replicas = serve.deployment(
        name="TallyReplica",
        num_replicas=server.replicas,
        ray_actor_options={"num_cpus": server.replica_threads},
        # A replica takes what its engine runs at once; more for an adapter go to another replica (Ray's routing
        # prefers the one holding it while it has room) or wait in the ingress, up to the engine's queue size.
        max_ongoing_requests=rows,
        max_queued_requests=engine.max_waiting,
        graceful_shutdown_timeout_s=server.replica_drain_s,
        graceful_shutdown_wait_loop_s=0.5,
        logging_config=SERVE_LOGS,
    )(TallyReplica).bind(replica_settings)
    ingress = serve.deployment(
        name="TallyIngress",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,
        graceful_shutdown_timeout_s=server.replica_drain_s,  # it relays what the replicas finish while draining
        graceful_shutdown_wait_loop_s=0.5,
        logging_config=SERVE_LOGS,
    )
    return ingress(TallyIngress).bind(replicas, settings.model_dump_json())


def _wait_for_signal() -> None:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _signum, _frame: stop.set())
    stop.wait()
