"""Two engine replicas behind the Ray Serve ingress, on loopback, over the tiny model: adapter affinity, a replica
killed under load losing no request, the same answers through the ingress as from one process."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.engine.conftest import TinySetup, tiny  # noqa: F401 (tiny is a fixture)

from tally.config import Settings
from tally.engine.registry import add as register_adapter
from tally.engine.registry import registry_path
from tally.ledger import open_ledger, verify_ledger
from tally.store import open_store

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
replicas = pytest.importorskip("tally.api.replicas")

ADAPTERS = ("ad0-r4", "ad1-r8", "ad2-r16")
WAIT_S = 300.0  # a generous bound on a loaded 2-core machine; every wait ends as soon as its condition holds


def wait_for(condition: Callable[[], Any], what: str, timeout: float = WAIT_S, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_settings(tiny: TinySetup, data: Path) -> Settings:  # noqa: F811
    settings = Settings.model_validate(
        {
            "data_dir": str(data),
            "models": {"default": str(tiny.model_dir)},
            "engine": {"max_num_seqs": 8, "max_model_len": 256, "max_tokens_per_step": 64, "max_rank": 16},
            "server": {
                "anonymous_inference": True,
                "replicas": 2,
                "replica_threads": 1,
                "max_request_bytes": 64 * 1024,
            },
            "attribution": {"default_mode": "fast"},  # every answer appends its record: both replicas write
            "chain": {"enabled": False},
            "studio": {"enabled": False},
        }
    )
    for name in ADAPTERS:
        register_adapter(registry_path(data), name, tiny.adapters[name])
    return settings


@pytest.fixture(scope="module")
def cluster(tiny: TinySetup, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Settings]]:  # noqa: F811
    settings = make_settings(tiny, tmp_path_factory.mktemp("replicas") / "data")
    port = free_port()
    # two logical CPUs whatever the machine has: one per replica thread
    replicas.init_ray(None, num_cpus=2)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(replicas.build_app(settings), name=replicas.APP_NAME, route_prefix="/")
        yield f"http://127.0.0.1:{port}", settings
    finally:
        serve.shutdown()
        ray.shutdown()


def complete(base: str, model: str, max_tokens: int = 8, **extra: Any) -> httpx.Response:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": max_tokens, "temperature": 0, **extra}
    return httpx.post(f"{base}/v1/completions", json=body, timeout=WAIT_S)


def replica_of(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers[replicas.REPLICA_HEADER]


def routers_told(model: str, replica: str) -> bool:
    """Ray's controller has told the routers (the ingress's among them) that `replica` holds `model`: the snapshot
    its long poll hands out, read the way a router reads it."""
    from ray.serve._private.common import DeploymentID
    from ray.serve._private.long_poll import LongPollNamespace
    from ray.serve.context import _get_global_client

    key = (LongPollNamespace.DEPLOYMENT_TARGETS, DeploymentID("TallyReplica", replicas.APP_NAME))
    updates = ray.get(_get_global_client()._controller.listen_for_change.remote({key: -1}))
    targets = updates[key].object_snapshot
    return any(r.replica_id.unique_id == replica and model in r.multiplexed_model_ids for r in targets.running_replicas)


def running_replicas() -> int:
    status = serve.status().applications[replicas.APP_NAME]
    deployment = status.deployments["TallyReplica"]
    return int(deployment.replica_states.get("RUNNING", 0)) if status.status == "RUNNING" else 0


def test_replicas(cluster: tuple[str, Settings]) -> None:
    base, settings = cluster
    wait_for(lambda: running_replicas() == 2, "two running replicas")

    # (c) the same models through the ingress, whichever replica answers
    listings = [httpx.get(f"{base}/v1/models", timeout=WAIT_S) for _ in range(4)]
    ids = [sorted(m["id"] for m in r.json()["data"]) for r in listings]
    assert all(r.status_code == 200 for r in listings)
    assert ids[0] == sorted([str(Path(settings.models.default)), *ADAPTERS])
    assert all(i == ids[0] for i in ids)

    # (a) adapter affinity: once Ray knows where an adapter is held, its requests go there
    for adapter in ADAPTERS[:2]:
        first = replica_of(complete(base, adapter))
        wait_for(lambda a=adapter, r=first: routers_told(a, r), f"the routers to learn where {adapter} is")
        again = [replica_of(complete(base, adapter)) for _ in range(3)]
        assert again == [first] * 3, f"{adapter}: first on {first}, then on {again}"

    # the app's own refusals pass through: an unknown adapter (404), a body over the cap (413)
    assert complete(base, "no-such-adapter").status_code == 404
    big = httpx.post(f"{base}/v1/completions", content=b"x" * (100 * 1024), timeout=WAIT_S)
    assert big.status_code == 413 and big.json()["error"]["type"] == "invalid_request_error"

    # an adapter loaded through one replica's route would be served by that replica only: refused, saying what works
    refused = httpx.post(f"{base}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": "/x"}, timeout=WAIT_S)
    assert refused.status_code == 409 and "tally adapters add" in refused.json()["error"]["message"]

    # streaming passes through as SSE, chunk by chunk, ending in [DONE]
    with httpx.stream(
        "POST",
        f"{base}/v1/chat/completions",
        json={"model": ADAPTERS[0], "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": True},
        timeout=WAIT_S,
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and json.loads(events[0])["object"] == "chat.completion.chunk"

    # (b) the replica holding an adapter is killed while requests for it are in flight: every request the client
    # sent is answered 200 (the ingress resends those the dead replica never answered to the other replica)
    victim = replica_of(complete(base, ADAPTERS[0]))
    actor = ray.get_actor(f"SERVE_REPLICA::{replicas.APP_NAME}#TallyReplica#{victim}", namespace="serve")
    with ThreadPoolExecutor(16) as pool:  # twice the engine's batch: some run, some wait in its queue
        futures = [pool.submit(complete, base, ADAPTERS[0], 128) for _ in range(16)]
        ongoing = lambda: ray.get(actor.get_num_ongoing_requests.remote()) >= 4  # noqa: E731
        wait_for(ongoing, "requests in flight on the victim", every=0.01)
        ray.kill(actor)
        answers = [f.result() for f in futures]
    served_by = {a.headers.get(replicas.REPLICA_HEADER) for a in answers}
    assert [a.status_code for a in answers] == [200] * len(answers), [a.text for a in answers if a.is_error]
    assert all(a.json()["choices"][0]["text"] is not None for a in answers)
    assert served_by - {victim}, "no request was answered by the surviving replica"

    # Serve replaces the dead replica: two running again, and both answer
    wait_for(lambda: running_replicas() == 2, "the killed replica to be replaced")
    assert complete(base, ADAPTERS[2]).status_code == 200

    # both replicas appended to one ledger, one writer at a time: it verifies whole, from its first entry
    store = open_store(settings)
    try:
        report = verify_ledger(open_ledger(settings, store))
    finally:
        store.dispose()
    assert report.size > len(answers)


def test_the_ingress_prefers_a_replica_for_adapters_only(tmp_path: Path) -> None:
    from starlette.requests import Request

    settings = Settings.model_validate(
        {
            "data_dir": str(tmp_path),
            "models": {"default": "base"},
            "rag": {
                "aliases": {
                    "docs": {"model": "ad", "datanets": ["d"]},
                    "base-docs": {"model": "base", "datanets": ["d"]},
                }
            },
        }
    )

    def held(model: object, path: str = "/v1/chat/completions", method: str = "POST") -> str:
        request = Request({"type": "http", "method": method, "path": path, "headers": [], "query_string": b""})
        return replicas._held_model(settings, request, json.dumps({"model": model}).encode())

    assert held("ad") == "ad" and held("ad", "/v1/completions") == "ad"
    assert held("docs") == "ad"  # a RAG alias: its adapter
    assert held("base") == "" and held("base-docs") == ""  # every replica has the base model
    assert held("ad", "/v1/models", "GET") == "" and held("ad", "/v1/load_lora_adapter") == ""
    assert held(None) == "" and held(["ad"]) == ""
    request = Request({"type": "http", "method": "POST", "path": "/v1/completions", "headers": [], "query_string": b""})
    assert replicas._held_model(settings, request, b"not json") == ""


def test_a_replica_with_an_auto_sized_engine_may_take_as_many_requests_as_it_could_have_rows() -> None:
    from tally.engine.sizing import AUTO_MAX_SEQS

    assert replicas.AUTO_SEQS_CEILING == AUTO_MAX_SEQS


def test_body_messages_waiting_together_cross_to_the_ingress_as_one() -> None:
    start = {"type": "http.response.start", "status": 200, "headers": []}
    chunks = [{"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True} for i in range(3)]
    last = {"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False}
    merged = replicas.coalesce([start, *chunks, last])
    assert merged == [
        start,
        {
            "type": "http.response.body",
            "body": b"data: 0\n\ndata: 1\n\ndata: 2\n\ndata: [DONE]\n\n",
            "more_body": False,
        },
    ]
    # a stream still open stays open; a lone message passes as it is
    assert replicas.coalesce(chunks[:2]) == [
        {"type": "http.response.body", "body": b"data: 0\n\ndata: 1\n\n", "more_body": True}
    ]
    assert replicas.coalesce([chunks[0]]) == [chunks[0]]
    # another kind of message between two runs of bodies keeps its place; each run joins on its own side
    trailers = {"type": "http.response.trailers", "headers": [], "more_trailers": False}
    assert replicas.coalesce([chunks[0], chunks[1], trailers, chunks[2]]) == [
        {"type": "http.response.body", "body": b"data: 0\n\ndata: 1\n\n", "more_body": True},
        trailers,
        chunks[2],
    ]
    assert replicas.coalesce([]) == []


def test_a_replica_yields_its_apps_messages_in_order_with_queued_bodies_joined(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    sent = [
        {"type": "http.response.start", "status": 200, "headers": []},
        *({"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True} for i in range(3)),
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert (await receive())["body"] == b"{}"
        for message in sent:  # all at once: they wait in the replica's queue together
            await send(message)

    monkeypatch.setattr(replicas.serve, "get_multiplexed_model_id", lambda: "")
    replica = object.__new__(replicas.TallyReplica)  # no Ray: the app and the name are all `handle` needs
    replica.app, replica.name = app, "r1"

    async def run() -> list[Any]:
        return [m async for m in replica.handle({"type": "http", "path": "/v1/completions"}, b"{}")]

    got = asyncio.run(run())
    assert got[0]["type"] == "http.response.start"
    assert (replicas.REPLICA_HEADER.encode(), b"r1") in got[0]["headers"]
    assert got[1:] == [{"type": "http.response.body", "body": b"data: 0\n\ndata: 1\n\ndata: 2\n\n", "more_body": False}]
