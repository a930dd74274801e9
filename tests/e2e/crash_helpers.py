"""Helpers for the crash tests: a real `tally serve` in its own process group (so SIGKILL takes its workers with it),
a seeded random source per scenario, and the checks run after each kill and restart."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from tally.config import Settings
from tally.ledger import open_ledger, verify_ledger
from tally.store import open_store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scenario_rng(name: str) -> random.Random:
    """A seeded source for one scenario; `TALLY_CRASH_SEED` replays a seed a failure printed."""
    given = os.environ.get("TALLY_CRASH_SEED")
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"crash scenario {name}: seed {seed} (replay with TALLY_CRASH_SEED={seed})", flush=True)
    return random.Random(seed)


def _group_members(pgid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


class Server:
    """`tally serve` on one data directory, restarted on the same port; each start is a new process group."""

    def __init__(self, settings: Settings, log: Path, **env: str) -> None:
        self.settings, self.log, self.port = settings, log, free_port()
        self.env = {
            **os.environ, "TALLY_DATA_DIR": str(settings.data_dir), "TALLY_CHAIN__ENABLED": "false",
            "TALLY_SERVER__RATE_LIMIT_PER_MINUTE": "0", "TALLY_DATANETS__MAX_ROWS_PER_DAY": "100000000", **env,
        }  # fmt: skip
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self, timeout: float = 180) -> None:
        assert self.proc is None
        self.starts += 1
        with self.log.open("ab") as out:
            out.write(f"\n--- start {self.starts} ---\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tally.cli.main", "serve", "--port", str(self.port)],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"tally serve exited {self.proc.returncode}\n{self.tail()}"
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"tally serve did not answer /health in {timeout} s\n{self.tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the server and every process of its group (its job workers), and wait until all are gone."""
        assert self.proc is not None
        pgid = self.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc = None
        deadline = time.monotonic() + 30
        while _group_members(pgid):
            assert time.monotonic() < deadline, f"processes of group {pgid} outlived SIGKILL: {_group_members(pgid)}"
            time.sleep(0.05)

    def stop(self) -> None:
        """A clean stop (SIGTERM), for the end of a scenario; SIGKILL if it hangs."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=90)
        pgid = self.proc.pid
        if self.proc.poll() is None or _group_members(pgid):
            self.kill()
        self.proc = None


def check_integrity(settings: Settings, *extra: Callable[[Any, Any], None]) -> None:
    """The ledger verifies, the state audit agrees with it, and each `extra(session, ledger)` check passes."""
    from tally.answers import load_event_types
    from tally.answers.audit import audit

    load_event_types()
    store = open_store(settings)
    try:
        ledger = open_ledger(settings, store)
        verify_ledger(ledger)
        report = audit(store, ledger)
        assert report.divergence is None, f"state audit: {report.divergence.describe()}"
        with store.read() as s:
            for check in extra:
                check(s, ledger)
    finally:
        store.dispose()


def entry_type(ledger: Any, seq: int, session: Any) -> dict[str, Any]:
    entry: dict[str, Any] = json.loads(ledger.entry(seq, session))
    return entry


def count(session: Any, column: Any, *where: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(column.class_).where(*where)) or 0)
