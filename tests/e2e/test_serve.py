"""`tally serve` as a user starts it: a real uvicorn process answering /health and the ledger routes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx

from tally.config import Settings
from tally.ledger import verify_receipt


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_health_and_ledger_routes(settings: Settings) -> None:
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
        deadline = time.monotonic() + 60
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
        assert checkpoint["size"] == 1
        receipt = httpx.get(f"{base}/v1/ledger/entries/0/receipt").json()
        assert verify_receipt(receipt, trusted_key=checkpoint["verifier_key"]).type == "ledger.created"
        assert httpx.get(f"{base}/v1/ledger/proofs/inclusion", params={"index": 0}).status_code == 200
        assert httpx.get(f"{base}/v1/ledger/proofs/consistency", params={"first": 1}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=20)
