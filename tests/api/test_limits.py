"""Limits: body size before parsing (413), per-caller rates (429 + Retry-After), a bounded engine queue (503 +
Retry-After), prompts per request, and numbers out of range (400, never a 500)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_app
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 (tiny is a fixture)

from tally.answers.ratelimit import RateLimiter
from tally.api import create_app
from tally.api.limits import MULTIPART_OVERHEAD, body_cap
from tally.config import Settings
from tally.engine import EngineBusyError, SamplingParams
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import Store, open_store

ALL_ROLES = ["admin", "owner", "contributor", "developer", "consumer"]


def _limited(settings: Settings, **server: Any) -> Settings:
    return settings.model_copy(update={"server": settings.server.model_copy(update=server)})


def _keys(store: Store, settings: Settings, count: int) -> list[dict[str, str]]:
    ledger = open_ledger(settings, store)
    headers = []
    with store.transaction() as s:
        for i in range(count):
            account, _ = create_account(s, ledger, f"user{i}", ALL_ROLES)
            headers.append({"Authorization": f"Bearer {create_api_key(s, ledger, account)[1]}"})
    return headers


@pytest.fixture
def limited(settings: Settings) -> Iterator[tuple[TestClient, list[dict[str, str]]]]:
    """An app without an engine: a 4 KiB body cap and 3 requests at once, then one a second."""
    settings = _limited(settings, max_request_bytes=4096, rate_limit_per_minute=60, rate_limit_burst=3)
    store = open_store(settings)
    keys = _keys(store, settings, 2)
    from tally.answers import build_runtime

    with TestClient(create_app(runtime=build_runtime(settings, store=store))) as client:
        yield client, keys
    store.dispose()


def _is_openai_error(r: Any, status: int, type_: str) -> None:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == type_ and error["message"]


def test_a_body_over_the_cap_is_refused_from_its_length(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    client, keys = limited
    r = client.post("/v1/keys", content=b"x" * 5000, headers={**keys[0], "content-type": "application/json"})
    _is_openai_error(r, 413, "invalid_request_error")
    assert "4096" in r.json()["error"]["message"]
    assert r.headers["connection"] == "close"  # the unread body is not drained


def test_a_chunked_body_is_counted_and_cut_at_the_cap(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    client, keys = limited

    def chunks() -> Iterator[bytes]:
        yield b'{"label": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = client.post("/v1/keys", content=chunks(), headers={**keys[0], "content-type": "application/json"})
    _is_openai_error(r, 413, "invalid_request_error")


def test_a_body_under_the_cap_goes_through(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    client, keys = limited
    body = '{"label": "x"}' + " " * 3000  # JSON's own whitespace: a key's label is at most 128 characters
    r = client.post("/v1/keys", content=body, headers={**keys[0], "content-type": "application/json"})
    assert r.status_code == 201, r.text


def test_the_upload_route_has_the_upload_cap(settings: Settings) -> None:
    settings = _limited(settings, max_request_bytes=4096)
    assert body_cap(settings, "/v1/keys") == 4096
    upload = body_cap(settings, "/v1/datanets/notes/contributions")
    assert upload == settings.datanets.max_upload_bytes + MULTIPART_OVERHEAD


def test_an_upload_larger_than_the_request_cap_reaches_the_route(
    limited: tuple[TestClient, list[dict[str, str]]],
) -> None:
    client, keys = limited
    r = client.post("/v1/datanets/none/contributions", files={"file": ("a.jsonl", b"z" * 20_000)}, headers=keys[0])
    assert r.status_code != 413 and r.status_code < 500, r.text  # the route answers (no such datanet)


def test_a_datanet_cannot_raise_its_upload_cap_past_the_server_cap(
    limited: tuple[TestClient, list[dict[str, str]]],
) -> None:
    client, keys = limited
    body = {"name": "big", "kind": "instruction", "license": "MIT", "uses": ["train"], "max_upload_bytes": 1 << 40}
    r = client.post("/v1/datanets", json=body, headers=keys[0])
    _is_openai_error(r, 400, "invalid_request_error")
    assert r.json()["error"]["param"] == "max_upload_bytes"


def test_a_key_past_its_burst_gets_429_with_retry_after(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    client, keys = limited
    answers = [client.get("/v1/accounts/me", headers=keys[0]) for _ in range(3)]
    assert [r.status_code for r in answers] == [200, 200, 200]
    start = time.monotonic()
    refused = client.get("/v1/accounts/me", headers=keys[0])
    _is_openai_error(refused, 429, "rate_limit_error")
    assert refused.headers["retry-after"] == "1"
    assert time.monotonic() - start >= 0.45  # held back (half to all of the wait it names): a flood costs little
    # another key keeps its own bucket; health checks are never limited
    assert client.get("/v1/accounts/me", headers=keys[1]).status_code == 200
    assert all(client.get("/health").status_code == 200 for _ in range(10))


def test_anonymous_callers_are_limited_by_address(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    client, keys = limited
    statuses = [client.get("/v1/ledger/checkpoint").status_code for _ in range(4)]
    assert statuses[3] == 429 and 429 not in statuses[:3]
    assert client.get("/v1/accounts/me", headers=keys[0]).status_code == 200


def test_made_up_keys_take_from_the_address_bucket(limited: tuple[TestClient, list[dict[str, str]]]) -> None:
    """A fresh random token per request buys no fresh bucket: one that does not authenticate counts against the
    caller's address, as an anonymous request does."""
    client, _ = limited
    statuses = [
        client.get("/v1/ledger/checkpoint", headers={"Authorization": f"Bearer made-up-{i}"}).status_code
        for i in range(4)
    ]
    assert statuses[3] == 429 and 429 not in statuses[:3]


def test_the_bucket_refills_at_the_rate_and_the_table_is_bounded() -> None:
    now = [0.0]
    limiter = RateLimiter(60, 2, max_callers=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 1.0]
    now[0] = 0.5
    assert limiter.acquire("a") == pytest.approx(0.5)  # half a token refilled
    now[0] = 1.0
    assert limiter.acquire("a") == 0.0
    for caller in "bcde":
        limiter.acquire(caller)
    assert len(limiter) == 3
    assert RateLimiter(0, 1).acquire("a") == 0.0  # 0 per minute: off


@pytest.fixture
def served(tiny: TinySetup, settings: Settings) -> Iterator[tuple[TestClient, Any, dict[str, str]]]:  # noqa: F811
    """The tiny engine behind the app, its step thread not started: what is submitted stays queued."""
    engine = make_engine(tiny, max_waiting=2)
    engine.start = lambda: engine
    settings = _limited(settings, max_prompts_per_request=2)
    store = open_store(settings)
    key = _keys(store, settings, 1)[0]
    with TestClient(make_app(engine, settings, store)) as client:
        yield client, engine, key
    store.dispose()


def test_a_full_engine_queue_answers_503_with_retry_after(served: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, engine, key = served
    for _ in range(2):
        engine.submit([1, 2, 3], SamplingParams(max_tokens=2), lambda out: None)
    with pytest.raises(EngineBusyError) as busy:
        engine.validate([1, 2, 3], SamplingParams(max_tokens=2))
    assert busy.value.kind == "unavailable" and busy.value.values["max_waiting"] == 2
    body = {"model": "tiny-base", "prompt": "hello", "max_tokens": 2}
    r = client.post("/v1/completions", json=body, headers=key)
    _is_openai_error(r, 503, "server_error")
    assert r.headers["retry-after"] == "1"
    r = client.post("/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]}, headers=key)
    assert r.status_code == 503 and r.headers["retry-after"] == "1"


def test_too_many_prompts_in_one_request(served: tuple[TestClient, Any, dict[str, str]]) -> None:
    client, _, key = served
    r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": ["a", "b", "c"]}, headers=key)
    _is_openai_error(r, 413, "invalid_request_error")
    assert r.json()["error"]["param"] == "prompt"


@pytest.mark.parametrize(
    ("field", "value"),
    [("max_tokens", 10**30), ("max_tokens", 10**6), ("seed", 10**30), ("seed", -(10**30))],
)
def test_huge_sampling_numbers_are_400(served: tuple[TestClient, Any, dict[str, str]], field: str, value: int) -> None:
    client, _, key = served
    r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": "hi", field: value}, headers=key)
    _is_openai_error(r, 400, "invalid_request_error")
    assert r.json()["error"]["param"] == field


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/keys", {"expires_in_days": 1e300}),
        ("post", "/v1/keys", {"expires_in_days": 10**12}),
        ("post", "/v1/datanets", {"name": "d", "kind": "instruction", "license": "MIT", "uses": ["train"],
                                  "max_rows_per_day": 10**30}),
        ("get", f"/v1/ledger/entries/{10**30}", None),
        ("get", f"/v1/ledger/proofs/inclusion?index=0&size={10**30}", None),
        ("get", f"/v1/ledger/proofs/consistency?first=1&second={10**30}", None),
    ],
)  # fmt: skip
def test_huge_numbers_anywhere_are_400(
    limited: tuple[TestClient, list[dict[str, str]]], method: str, path: str, body: dict[str, Any] | None
) -> None:
    client, keys = limited
    client.app.state.runtime.rate_limiter = RateLimiter(0, 1)  # type: ignore[attr-defined]
    r = client.request(method.upper(), path, json=body, headers=keys[0])
    _is_openai_error(r, 400, "invalid_request_error")
