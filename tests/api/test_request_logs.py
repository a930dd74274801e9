"""One INFO line per request with its id; JSON lines for machines; the engine loop logs what it swallows."""

from __future__ import annotations

import json
import logging
import time

import pytest
from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_app
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 - fixture

from tally.config import Settings
from tally.config.logs import REQUEST_ID, JsonFormatter


def test_each_request_is_one_line_with_its_id(
    tiny: TinySetup,  # noqa: F811
    settings: Settings,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="tally")
    with TestClient(make_app(make_engine(tiny), settings)) as client:
        mine = client.get("/health", headers={"X-Request-Id": "trace-42"})
        made = client.post("/v1/completions", json={"model": "ad1-r8", "prompt": "hi", "max_tokens": 3})
        hostile = client.get("/health", headers={"X-Request-Id": "x\ny" * 40})
    assert mine.headers["x-request-id"] == "trace-42"
    assert made.headers["x-request-id"].startswith("req-")
    assert hostile.headers["x-request-id"].startswith("req-")  # not echoed: not a plain id
    lines = [r for r in caplog.records if r.name == "tally.api.requests"]
    assert [(r.route, r.status) for r in lines] == [  # type: ignore[attr-defined]
        ("/health", 200),
        ("/v1/completions", 200),
        ("/health", 200),
    ]
    answer = lines[1]
    assert answer.model == "ad1-r8" and answer.completion_tokens <= 3 and answer.ms > 0  # type: ignore[attr-defined]


def test_json_lines_carry_the_request_id_fields_and_traceback() -> None:
    token = REQUEST_ID.set("req-abc")
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            import sys

            record = logging.LogRecord("tally.x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
        record.request_id = REQUEST_ID.get()
        record.model = "m"
        line = json.loads(JsonFormatter().format(record))
    finally:
        REQUEST_ID.reset(token)
    assert line["request_id"] == "req-abc" and line["message"] == "failed here" and line["model"] == "m"
    assert line["level"] == "ERROR" and "ValueError: boom" in line["exc_info"]


def test_the_engine_loop_logs_a_failed_step(tiny: TinySetup, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    from tally.engine import SamplingParams

    engine = make_engine(tiny)

    def broken() -> bool:
        raise RuntimeError("kernel exploded")

    engine.step = broken  # type: ignore[method-assign]
    caplog.set_level(logging.ERROR, logger="tally")
    engine.start()
    try:
        outputs: list = []
        engine.submit(engine.encode("hi"), SamplingParams(max_tokens=2), outputs.append)
        deadline = time.monotonic() + 10
        while not any("engine step failed" in r.getMessage() for r in caplog.records):
            assert time.monotonic() < deadline, "no log line for the failed step"
            time.sleep(0.01)
    finally:
        engine.stop()
    failed = next(r for r in caplog.records if "engine step failed" in r.getMessage())
    assert failed.exc_info is not None and "kernel exploded" in str(failed.exc_info[1])
