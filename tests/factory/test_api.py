"""The fine-tuning job API (OpenAI style) over HTTP: create, poll, events as a list and as SSE, refusals."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.datanets.conftest import World

from tally.api import create_app, factory_routes
from tally.identity import create_api_key


@pytest.fixture
def client(
    people: World, tiny_model: Path, job_worker: object
) -> Iterator[tuple[TestClient, dict[str, dict[str, str]]]]:
    people.settings.models.default = str(tiny_model)  # the server's base model: what API jobs may start from
    headers = {}
    with people.tx() as s:
        for who in ("dev", "consumer"):
            _, token = create_api_key(s, people.ledger, getattr(people, who))
            headers[who] = {"Authorization": f"Bearer {token}"}
    app = create_app(people.settings)
    app.include_router(factory_routes.router)
    with TestClient(app) as c:
        yield c, headers


def _config(tiny_model: Path, datanet: str = "people") -> dict:
    """An API job's config: the server's base model by name, and no output.dir (the server decides)."""
    return {
        "model": {"name": str(tiny_model)},
        "method": {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": datanet}], "max_length": 64},
        "train": {"epochs": 2, "batch_size": 4},
        "influence": {"dims": 16},
        "output": {"name": "people-api"},
    }


def test_job_runs_and_streams_its_events(client, tiny_model: Path, tmp_path: Path) -> None:
    c, h = client
    created = c.post("/v1/fine_tuning/jobs", json={"config": _config(tiny_model)}, headers=h["dev"])
    assert created.status_code == 200, created.text
    job = created.json()
    assert job["object"] == "fine_tuning.job" and job["status"] in ("queued", "running")
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = c.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=h["dev"]).json()
    assert job["status"] == "succeeded", job
    assert job["fine_tuned_model"] == "people-api" and job["trained_tokens"] > 0
    events = c.get(f"/v1/fine_tuning/jobs/{job['id']}/events", headers=h["dev"]).json()["data"]
    metrics = [e for e in events if e["type"] == "metrics"]
    assert len(metrics) == 4 and {"loss", "lr", "tokens_per_s", "eta_s"} <= set(metrics[0]["data"])
    with c.stream("GET", f"/v1/fine_tuning/jobs/{job['id']}/events?stream=true", headers=h["dev"]) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        body = "".join(r.iter_text())
    frames = [f for f in body.split("\n\n") if f.strip()]
    assert frames[-1].startswith("event: end") and sum(f.startswith("id: ") for f in frames) == len(events)
    final = json.loads(frames[-1].split("data: ", 1)[1])
    assert final["status"] == "succeeded"
    assert c.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=h["consumer"]).status_code == 404  # not theirs
    listed = c.get("/v1/fine_tuning/jobs", headers=h["dev"]).json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_refused_data_is_a_403_naming_the_datanet(client, people: World, tiny_model: Path, tmp_path: Path) -> None:
    c, h = client
    people.create("rag-only", policy="open", uses=["rag"])
    body = {"config": _config(tiny_model, datanet="rag-only")}
    r = c.post("/v1/fine_tuning/jobs", json=body, headers=h["dev"])
    assert r.status_code == 403 and "rag-only: datanet 'rag-only'" in r.json()["error"]["message"]
    assert c.post("/v1/fine_tuning/jobs", json=body, headers=h["consumer"]).status_code == 403
    bad = c.post("/v1/fine_tuning/jobs", json={"config": {"output": {"name": "x"}}}, headers=h["dev"])
    assert bad.status_code == 400 and "data" in bad.json()["error"]["message"]
    openai_style = c.post("/v1/fine_tuning/jobs", json={"training_file": "rag-only@latest"}, headers=h["dev"])
    assert openai_style.status_code == 403
