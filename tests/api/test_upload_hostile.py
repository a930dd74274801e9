"""Uploads are parsed off the event loop, and a hostile 1 MB line is refused quickly with the usual error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from tests.api.test_datanet_routes import alpaca, api  # noqa: F401 - the API fixture with real keys

from tally.datanets import contribute


def test_upload_parses_on_a_worker_thread(api, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    client, h = api
    body = {"name": "threads", "kind": "instruction", "license": "CC-BY-4.0", "uses": ["train"]}
    assert client.post("/v1/datanets", json=body, headers=h["olga"]).status_code == 201
    seen: list[bool] = []
    real = contribute.contribute

    def spy(*args: Any, **kwargs: Any) -> Any:
        try:
            asyncio.get_running_loop()
            seen.append(True)  # called on the event loop's thread: every other request would wait for it
        except RuntimeError:
            seen.append(False)
        return real(*args, **kwargs)

    monkeypatch.setattr(contribute, "contribute", spy)
    up = client.post("/v1/datanets/threads/contributions", files={"file": ("r.jsonl", alpaca(3))}, headers=h["alice"])
    assert up.status_code == 201, up.text
    assert seen == [False]


def test_a_hostile_megabyte_line_is_a_quick_400(api) -> None:  # noqa: F811
    client, h = api
    body = {"name": "hostile", "kind": "instruction", "license": "CC-BY-4.0", "uses": ["train"]}
    assert client.post("/v1/datanets", json=body, headers=h["olga"]).status_code == 201
    line = ('{"instruction": "' + "\\[" * 300_000 + '", "output": ' + "[" * 200_000).encode()
    start = time.perf_counter()
    r = client.post("/v1/datanets/hostile/contributions", files={"file": ("h.jsonl", line)}, headers=h["alice"])
    assert time.perf_counter() - start < 5  # measured well under a second; the bound is loose for slow CI
    assert r.status_code == 400 and "h.jsonl line 1" in r.json()["error"]["message"], r.text
    assert "nested deeper than 64 levels" in r.json()["error"]["message"]
