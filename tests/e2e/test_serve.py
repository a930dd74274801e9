"""`tally serve` as a user starts it: a real uvicorn process answering /health and the ledger routes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger, verify_receipt
from tally.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_ledger_and_chat(settings: Settings) -> None:
    """Needs the pulled base model (`make test` pulls it first)."""
    from tally.models import resolve_model

    try:
        resolve_model(settings.models.default, settings.models.cache_dir)
    except Exception as exc:
        pytest.skip(f"base model not pulled: {exc}")
    # a consumer's key: attribution records are for their requester, and anonymous answers accrue nothing
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "carl", ["consumer"])
        _, token = create_api_key(s, ledger, account)
    size = ledger.size()
    store.dispose()
    port = free_port()
    env = {**os.environ, "TALLY_DATA_DIR": str(settings.data_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tally.cli.main", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                health = httpx.get(f"{base}/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
                assert time.monotonic() < deadline, "server did not start within 60 s"
                time.sleep(0.2)
        assert health.json()["status"] == "ok"
        checkpoint = httpx.get(f"{base}/v1/ledger/checkpoint").json()
        assert checkpoint["size"] == size
        receipt = httpx.get(f"{base}/v1/ledger/entries/0/receipt").json()
        assert verify_receipt(receipt, trusted_key=checkpoint["verifier_key"]).type == "ledger.created"
        assert httpx.get(f"{base}/v1/ledger/proofs/inclusion", params={"index": 0}).status_code == 200
        assert httpx.get(f"{base}/v1/ledger/proofs/consistency", params={"first": 1}).status_code == 200

        # The engine serves the real base model to the official OpenAI client.
        assert httpx.get(f"{base}/v1/models").status_code == 401  # inference needs a key by default
        models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {token}"}).json()
        assert [m["id"] for m in models["data"]] == [settings.models.default], models
        from openai import OpenAI

        client = OpenAI(base_url=f"{base}/v1", api_key=token)
        chat = client.chat.completions.create(
            model=settings.models.default,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=20,
            temperature=0,
        )
        assert "Paris" in (chat.choices[0].message.content or "")
        summary = (chat.model_extra or {})["attribution"]  # default mode: fast; no datanet holds the answer
        assert summary["id"] == chat.id and summary["contributors"] == [] and summary["methods"] == {"spans": False}
        assert httpx.get(f"{base}{summary['url']}").status_code == 401
        record = httpx.get(f"{base}{summary['url']}", headers={"Authorization": f"Bearer {token}"}).json()
        assert verify_receipt(record["receipt"], trusted_key=checkpoint["verifier_key"]).payload["inference"] == chat.id
        raw = client.chat.completions.with_raw_response.create(
            model=settings.models.default, messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
            extra_body={"attribution": "off"},
        )  # fmt: skip
        assert "x-tally-receipt" not in raw.headers and "attribution" not in (raw.parse().model_extra or {})
    finally:
        proc.terminate()
        proc.wait(timeout=20)
