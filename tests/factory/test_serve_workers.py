"""`tally serve` runs jobs in a worker process it starts and stops; killed outright, its worker checkpoints and
gives the job back, and the next `tally serve` finishes it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.datanets.conftest import World

from tally.identity import create_api_key, get_account


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _until(what: str, ok: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.1)


class Server:
    def __init__(self, tiny_model: Path, tmp_path: Path) -> None:
        self.port, self.log = _free_port(), tmp_path / "serve.log"
        self.env = {**os.environ, "TALLY_MODELS__DEFAULT": str(tiny_model), "TALLY_FACTORY__WORKERS": "1"}
        self.proc: subprocess.Popen[bytes] | None = None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tally.cli.main", "serve", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip

        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text(errors="replace")[-4000:]
            try:
                return httpx.get(f"{self.base}/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _until("the server", up, self.log)
        return self.proc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def server(people: World, tiny_model: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(tiny_model, tmp_path)
    yield srv
    srv.stop()


def _job(tiny_model: Path, name: str, epochs: int) -> dict[str, Any]:
    return {"config": {
        "model": {"name": str(tiny_model)}, "method": {"rank": 2, "alpha": 4, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 64},
        "train": {"epochs": epochs, "batch_size": 1, "save_steps": 2}, "influence": {"dims": 16},
        "output": {"name": name},
    }}  # fmt: skip


def test_serve_starts_its_worker_and_a_restart_finishes_the_job(
    people: World, tiny_model: Path, server: Server
) -> None:
    with people.tx() as s:
        account = get_account(s, people.dev.address)
        assert account is not None
        _, token = create_api_key(s, people.ledger, account)
    auth = {"Authorization": f"Bearer {token}"}
    serve = server.start()
    [worker] = _children(serve.pid)
    assert b"tally.factory.worker" in Path(f"/proc/{worker}/cmdline").read_bytes()

    def status(job: dict[str, Any]) -> dict[str, Any]:
        return httpx.get(f"{server.base}/v1/fine_tuning/jobs/{job['id']}", headers=auth, timeout=10).json()

    quick = httpx.post(f"{server.base}/v1/fine_tuning/jobs", json=_job(tiny_model, "people-q", 1), headers=auth).json()
    _until("the quick job", lambda: status(quick)["status"] == "succeeded", server.log)

    long = httpx.post(f"{server.base}/v1/fine_tuning/jobs", json=_job(tiny_model, "people-l", 20), headers=auth).json()
    adapters = people.settings.data_dir / "adapters" / people.dev.address.lower()
    stage_log = adapters / ".people-l.partial" / "trainer_log.jsonl"
    _until("the long job to train", lambda: stage_log.is_file() and '"checkpoint"' in stage_log.read_text(), server.log)
    serve.send_signal(signal.SIGKILL)  # the server dies without a word to its worker
    serve.wait()
    _until("the orphaned worker to stop", lambda: not _running(worker), server.log, timeout=240)
    with people.ledger.store.read() as s:
        from tally.factory.tables import JobRow

        row = s.get(JobRow, long["id"])
        assert row is not None and row.status == "queued"  # checkpointed and given back, not left running

    serve = server.start()  # the restart: its new worker resumes the job
    _until("the long job", lambda: status(long)["status"] == "succeeded", server.log, timeout=900)
    [worker] = _children(serve.pid)
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(timeout=240) == 128 + signal.SIGTERM
    assert not _running(worker)  # stopped by the server before it exited, cleanly:
    assert f"workers stopped: pid {worker} exit 0" in server.log.read_text()
    assert '"type": "resumed"' in (adapters / "people-l" / "trainer_log.jsonl").read_text()
