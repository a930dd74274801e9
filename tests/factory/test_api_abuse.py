"""Hostile fine-tuning jobs: no server paths, no other developer's adapter names or directories, bounded sizes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.datanets.conftest import World

from tally.api import create_app, factory_routes
from tally.engine.files import hash_adapter
from tally.factory.tables import AdapterRow
from tally.identity import Principal, create_account, create_api_key

Headers = dict[str, dict[str, str]]


@pytest.fixture
def client(people: World, tiny_model: Path, job_worker: object) -> Iterator[tuple[TestClient, Headers, Principal]]:
    people.settings.models.default = str(tiny_model)
    headers = {}
    with people.tx() as s:
        account, _ = create_account(s, people.ledger, "mallory", ["developer"], keys_dir=people.keys)
        mallory = Principal.of(account)
        for name, who in (("dev", people.dev), ("mallory", mallory)):
            _, token = create_api_key(s, people.ledger, who)
            headers[name] = {"Authorization": f"Bearer {token}"}
    app = create_app(people.settings)
    app.include_router(factory_routes.router)
    with TestClient(app) as c:
        yield c, headers, mallory


def _config(model: str, name: str = "people-mine", **sections: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": model},
        "method": {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 64},
        "train": {"epochs": 1, "batch_size": 4},
        "influence": {"dims": 16},
        "output": {"name": name, "publish": True},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return {"config": raw}


def _wait(c: TestClient, job: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while job["status"] not in ("succeeded", "failed", "cancelled") and time.monotonic() < deadline:
        time.sleep(0.2)
        job = c.get(f"/v1/fine_tuning/jobs/{job['id']}", headers=headers).json()
    return job


def test_a_second_developer_cannot_overwrite_or_repoint_an_adapter(
    client: tuple[TestClient, Headers, Principal], people: World, tiny_model: Path
) -> None:
    c, h, mallory = client
    model = str(tiny_model)
    created = c.post("/v1/fine_tuning/jobs", json=_config(model), headers=h["dev"])
    assert created.status_code == 200, created.text
    job = _wait(c, created.json(), h["dev"])
    assert job["status"] == "succeeded", job
    assert job["output_dir"] == f"<data_dir>/adapters/{people.dev.address.lower()}/people-mine"  # no server paths
    home = people.settings.data_dir / "adapters" / people.dev.address.lower() / "people-mine"
    assert (home / "adapter_model.safetensors").is_file()
    assert not any(p.name.endswith(".partial") for p in home.parent.iterdir())  # the staging directory was renamed
    before = hash_adapter(home)
    manifest = json.loads((home / "manifest.json").read_text())
    assert manifest["trained_by"] == people.dev.address
    with people.ledger.store.read() as s:
        assert s.get(AdapterRow, before).created_by == people.dev.address

    # the same name from another developer: refused before anything runs
    taken = c.post("/v1/fine_tuning/jobs", json=_config(model), headers=h["mallory"])
    assert taken.status_code == 409 and "belongs to another developer" in taken.json()["error"]["message"]
    # pointing output.dir at the adapter's directory (or anywhere): refused
    aimed = _config(model, "other")
    aimed["config"]["output"]["dir"] = str(home)
    refused = c.post("/v1/fine_tuning/jobs", json=aimed, headers=h["mallory"])
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "output.dir"
    # the owner cannot overwrite it either: an adapter directory is written once
    again = c.post("/v1/fine_tuning/jobs", json=_config(model), headers=h["dev"])
    assert again.status_code == 409 and "never overwritten" in again.json()["error"]["message"]
    assert str(people.settings.data_dir) not in again.json()["error"]["message"]  # no server paths
    # the served name still points at the owner's adapter, byte for byte unchanged
    registry = json.loads((people.settings.data_dir / "adapters.json").read_text())["adapters"]
    assert registry["people-mine"]["adapter_id"] == before == hash_adapter(home)
    assert json.loads((home / "manifest.json").read_text())["trained_by"] == people.dev.address

    # mallory's own adapter lands in mallory's folder, credited to mallory
    # (same data, config and seed would give the same bytes: the first developer keeps an identical adapter)
    twin = _wait(c, c.post("/v1/fine_tuning/jobs", json=_config(model, "twin"), headers=h["mallory"]).json(),
                 h["mallory"])  # fmt: skip
    assert twin["status"] == "failed" and "already trained by" in twin["error"]["message"]
    assert not (people.settings.data_dir / "adapters" / mallory.address.lower() / "twin").exists()
    mine = _config(model, "mallory-one", train={"seed": 5})
    own = _wait(c, c.post("/v1/fine_tuning/jobs", json=mine, headers=h["mallory"]).json(), h["mallory"])
    assert own["status"] == "succeeded", own
    theirs = people.settings.data_dir / "adapters" / mallory.address.lower() / "mallory-one"
    assert json.loads((theirs / "manifest.json").read_text())["trained_by"] == mallory.address


@pytest.mark.parametrize("model", ["/etc", "../models/x", "~/.cache/tally/models/smollm2-135m-instruct", "gpt-9"])
def test_model_name_must_be_a_model_the_server_knows(client: tuple[TestClient, Headers, Principal], model: str) -> None:
    c, h, _ = client
    r = c.post("/v1/fine_tuning/jobs", json=_config(model), headers=h["dev"])
    assert r.status_code == 400 and r.json()["error"]["param"] == "model.name", r.text


@pytest.mark.parametrize(
    ("section", "field", "value"),
    [("train", "epochs", 1000), ("train", "batch_size", 4096), ("data", "max_length", 1 << 20),
     ("influence", "dims", 1 << 16)],
)  # fmt: skip
def test_training_size_above_the_limits_is_refused_naming_the_field(
    client: tuple[TestClient, Headers, Principal], tiny_model: Path, section: str, field: str, value: int
) -> None:
    c, h, _ = client
    r = c.post("/v1/fine_tuning/jobs", json=_config(str(tiny_model), **{section: {field: value}}), headers=h["dev"])
    error = r.json()["error"]
    assert r.status_code == 413 and error["param"] == f"{section}.{field}" and "at most" in error["message"], r.text


def test_too_many_rows_is_a_limit(client: tuple[TestClient, Headers, Principal], people: World, tiny_model: Path):
    c, h, _ = client
    people.settings.factory.max_rows = 3
    r = c.post("/v1/fine_tuning/jobs", json=_config(str(tiny_model)), headers=h["dev"])
    assert r.status_code == 413 and "at most 3" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize(
    "body",
    [
        {"training_file": "people", "seed": 10**30},
        {"training_file": "people", "hyperparameters": {"n_epochs": 10**30}},
        {"training_file": "people", "hyperparameters": [1, 2]},
        {"training_file": "people", "seed": -1},
    ],
)
def test_out_of_range_numbers_are_a_400(client: tuple[TestClient, Headers, Principal], body: dict) -> None:
    c, h, _ = client
    r = c.post("/v1/fine_tuning/jobs", json=body, headers=h["dev"])
    assert r.status_code == 400, r.text
