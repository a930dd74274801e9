"""The OpenAI-compatible routes: shapes, errors, SSE, adapter load/unload, metrics; and the official client."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 (tiny is a fixture)

from tally.answers import Runtime
from tally.api import create_app
from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.rewards import effective_policy
from tally.store import Store, open_store


def make_runtime(engine: Any, settings: Settings, store: Store | None = None, attributor: Any = None) -> Runtime:
    """A runtime around a test's own engine (and attributor); the app starts the engine and stops it after.

    Anonymous inference is on here: these tests are about the OpenAI shapes and the answer path; who may call is
    tested route by route in tests/api/test_policy_matrix.py, with the default (a key needed)."""
    settings = settings.model_copy(update={"server": settings.server.model_copy(update={"anonymous_inference": True})})
    own = store is None
    store = store or open_store(settings)
    policy = effective_policy(settings)[0]
    return Runtime(settings, store, open_ledger(settings, store), policy, engine, attributor, owns_store=own)


def make_app(engine: Any, settings: Settings, store: Store | None = None, attributor: Any = None) -> FastAPI:
    """The app `tally serve` runs, around the test's engine."""
    return create_app(runtime=make_runtime(engine, settings, store, attributor))


ADMIN: dict[str, str] = {}


@pytest.fixture
def client(tiny: TinySetup, settings: Settings) -> Iterator[TestClient]:  # noqa: F811
    """The tiny engine, plus the store and an admin key the adapter routes require."""
    engine = make_engine(tiny)
    engine.remove_adapter("ad8-r16")  # left for the load test
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "root", ["admin"])
        _, token = create_api_key(s, ledger, account)
        _, consumer = create_api_key(s, ledger, create_account(s, ledger, "carl", ["consumer"])[0])
    ADMIN.update({"Authorization": f"Bearer {token}"})
    ADMIN["consumer"] = consumer
    with TestClient(make_app(engine, settings, store)) as c:
        yield c
    store.dispose()


def test_models_lists_base_and_adapters_with_parent(client: TestClient) -> None:
    data = client.get("/v1/models").json()["data"]
    assert data[0]["id"] == "tiny-base" and data[0]["parent"] is None
    adapters = {m["id"]: m for m in data[1:]}
    assert "ad0-r4" in adapters and adapters["ad0-r4"]["parent"] == "tiny-base"
    assert len(adapters["ad0-r4"]["adapter_id"]) == 64
    assert all(m["root"] == m["id"] for m in data)  # names only: no server path


def test_completion_and_usage(client: TestClient) -> None:
    body = {"model": "ad1-r8", "prompt": "the capital of", "max_tokens": 5, "temperature": 0}
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "text_completion" and out["model"] == "ad1-r8"
    assert out["usage"]["completion_tokens"] <= 5 and out["usage"]["prompt_tokens"] > 0
    assert out["usage"]["total_tokens"] == out["usage"]["prompt_tokens"] + out["usage"]["completion_tokens"]
    # it stops early only at the end-of-turn token; otherwise the token budget ends it
    assert out["choices"][0]["finish_reason"] == ("length" if out["usage"]["completion_tokens"] == 5 else "stop")
    again = client.post("/v1/completions", json=body).json()
    assert again["choices"][0]["text"] == out["choices"][0]["text"]


def test_unknown_model_is_a_404_never_a_fallback(client: TestClient) -> None:
    for path, extra in (
        ("/v1/completions", {"prompt": "x"}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}),
    ):
        r = client.post(path, json={"model": "nope", **extra})
        assert r.status_code == 404
        err = r.json()["error"]
        assert (
            "'nope' does not exist" in err["message"] and err["param"] == "model" and err["type"] == "not_found_error"
        )


def test_chat_completion_and_sse_stream(client: TestClient) -> None:
    body = {"model": "ad2-r16", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 6, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body).json()
    assert whole["object"] == "chat.completion" and whole["choices"][0]["message"]["role"] == "assistant"
    with client.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        lines = [line[len("data: ") :] for line in r.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    chunks = [json.loads(x) for x in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == whole["choices"][0]["message"]["content"]
    assert [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert chunks[-1]["usage"] == whole["usage"]


def test_load_and_unload_adapter(client: TestClient, tiny: TinySetup, tmp_path: Path) -> None:  # noqa: F811
    body = {"lora_name": "fresh", "lora_path": str(tiny.adapters["ad8-r16"])}
    assert client.post("/v1/load_lora_adapter", json=body).status_code == 401
    as_consumer = {"Authorization": f"Bearer {ADMIN['consumer']}"}
    assert client.post("/v1/load_lora_adapter", json=body, headers=as_consumer).status_code == 403
    admin = {"Authorization": ADMIN["Authorization"]}
    r = client.post("/v1/load_lora_adapter", json=body, headers=admin)
    assert r.status_code == 200, r.text
    assert "fresh" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    ok = client.post("/v1/completions", json={"model": "fresh", "prompt": "hello", "max_tokens": 3})
    assert ok.status_code == 200
    bad = client.post("/v1/load_lora_adapter", json={"lora_name": "bad", "lora_path": str(tmp_path)}, headers=admin)
    assert bad.status_code == 400 and "adapter 'bad'" in bad.json()["error"]["message"]
    assert client.post("/v1/unload_lora_adapter", json={"lora_name": "fresh"}, headers=admin).status_code == 200
    assert client.post("/v1/completions", json={"model": "fresh", "prompt": "hello"}).status_code == 404
    gone = client.post("/v1/unload_lora_adapter", json={"lora_name": "fresh"}, headers=admin)
    assert gone.status_code == 404


def test_bad_requests_are_400(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": "x", "max_tokens": 10_000})
    assert r.status_code == 400 and "exceeds" in r.json()["error"]["message"]
    r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": "x", "temperature": 5})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"


def test_metrics_are_prometheus_text(client: TestClient) -> None:
    client.post("/v1/completions", json={"model": "ad3-r4", "prompt": "hello", "max_tokens": 3})
    text = client.get("/metrics").text
    for name in (
        "tally_engine_requests_running",
        "tally_engine_requests_waiting",
        "tally_engine_adapter_load_seconds_bucket",
        'tally_engine_adapter_cache_lookups_total{result="hit"}',
        "tally_engine_tokens_per_second",
    ):
        assert name in text, name
    assert 'adapter="ad3-r4"' in text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tiny: TinySetup, settings: Settings) -> Iterator[str]:  # noqa: F811
    import uvicorn

    port = _free_port()
    app = make_app(make_engine(tiny), settings)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    srv.should_exit = True
    thread.join(timeout=30)


def test_official_openai_client(server: str) -> None:
    import openai

    client = openai.OpenAI(base_url=server, api_key="unused", max_retries=0)
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "tiny-base" and "ad4-r8" in ids
    done = client.completions.create(model="ad4-r8", prompt="hello world", max_tokens=6, temperature=0)
    assert done.usage is not None and done.usage.completion_tokens <= 6
    streamed = client.completions.create(model="ad4-r8", prompt="hello world", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    chat = client.chat.completions.create(
        model="ad5-r16", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, seed=3
    )
    assert chat.choices[0].message.role == "assistant"
    stream = client.chat.completions.create(
        model="ad5-r16", messages=[{"role": "user", "content": "hi"}], max_tokens=5, temperature=0, seed=3, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == chat.choices[0].message.content
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}])
