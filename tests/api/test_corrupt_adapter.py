"""Over HTTP: a corrupt adapter is a 400 naming it, and the adapters beside it keep answering."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_app
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 (tiny is a fixture)

from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store


def test_a_corrupt_adapter_is_a_400_and_others_keep_answering(
    tiny: TinySetup,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny.adapters["ad0-r4"], broken)
    (broken / "adapter_model.safetensors").write_bytes(b"\x00garbage, not safetensors\xff" * 40)
    engine = make_engine(tiny)
    engine.add_adapter("broken", broken, load_now=False)  # registered as a server start would: read on first use
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        _, token = create_api_key(s, ledger, create_account(s, ledger, "carl", ["consumer"])[0])
    headers = {"Authorization": f"Bearer {token}"}

    def ask(model: str) -> tuple[int, str]:
        body = {"model": model, "prompt": "the capital of", "max_tokens": 4, "temperature": 0}
        r = client.post("/v1/completions", json=body, headers=headers)
        return r.status_code, r.text

    with TestClient(make_app(engine, settings, store)) as client, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(ask, ["broken", "ad1-r8", "broken", "ad1-r8", "broken", "ad1-r8"]))
    store.dispose()
    for model, (status, text) in zip(["broken", "ad1-r8"] * 3, results, strict=True):
        if model == "broken":
            assert status == 400 and "adapter 'broken'" in text, text
        else:
            assert status == 200, text
