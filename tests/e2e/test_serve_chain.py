"""`tally serve` anchors on the embedded chain by default, and the chain outlives a SIGKILL of the server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
from tests.conftest import append_notes
from tests.e2e.test_serve import free_port

from tally.config import Settings
from tally.ledger import open_ledger
from tally.store import open_store


def serve(settings: Settings, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "TALLY_DATA_DIR": str(settings.data_dir), "TALLY_CHAIN__ENABLED": "true"}
    return subprocess.Popen([sys.executable, "-m", "tally.cli.main", "serve", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def wait_for(proc: subprocess.Popen[str], url: str, done: Any, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            body = httpx.get(url, timeout=5).json()
            if done(body):
                return body
        except httpx.TransportError:
            pass
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "server exited"
        assert time.monotonic() < deadline, f"{url} did not get there within {timeout} s"
        time.sleep(0.3)


def test_serve_anchors_and_the_chain_survives_a_kill(settings: Settings) -> None:
    store = open_store(settings)
    append_notes(open_ledger(settings, store), 30)
    size = open_ledger(settings, store).size()
    store.dispose()
    port = free_port()
    status_url = f"http://127.0.0.1:{port}/v1/chain/status"
    proc = serve(settings, port)
    try:
        first = wait_for(proc, status_url, lambda b: b.get("log", {}).get("anchored_size", 0) >= size)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert first["backend"] == "embedded" and first["log"]["unanchored_entries"] == 0

    proc = serve(settings, port)  # the same data directory: the same chain, its anchors and contracts
    try:
        again = wait_for(proc, status_url, lambda b: "log" in b)
        assert again["contracts"] == first["contracts"]
        assert again["log"]["anchored_size"] == first["log"]["anchored_size"]
        assert again["block_number"] >= first["block_number"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    env = {**os.environ, "TALLY_DATA_DIR": str(settings.data_dir), "TALLY_CHAIN__ENABLED": "true"}
    verified = subprocess.run([sys.executable, "-m", "tally.cli.main", "chain", "verify"], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    assert verified.returncode == 0 and "1 anchors match" in verified.stdout, verified.stdout + verified.stderr
