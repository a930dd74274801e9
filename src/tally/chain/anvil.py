"""A local anvil node (Foundry's EVM node, from npm `@foundry-rs/anvil`) for tests and benchmarks.

`AnvilNode()` starts nothing; `start()` (or `with AnvilNode() as node:`) runs anvil on 127.0.0.1 at a free port,
silent, and returns once its JSON-RPC answers; `node.url` is then its HTTP endpoint and `stop()` ends it (SIGTERM,
then SIGKILL). `state=` names a file anvil loads at start (when it exists) and writes back when it stops, so a node
can be stopped and started again with its chain.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from tally.config.errors import TallyError

ANVIL_ENV = "TALLY_ANVIL"  # an anvil binary to use instead of the repository's node_modules/.bin/anvil
# Anvil's well-known development account 0 (from the mnemonic "test test ... junk"): public knowledge, funded with
# 10,000 ETH on every anvil chain. For tests only.
ANVIL_DEV_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
ANVIL_DEV_ADDRESS = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
_PLATFORM_PACKAGES = {
    ("linux", "x86_64"): "anvil-linux-amd64",
    ("linux", "aarch64"): "anvil-linux-arm64",
    ("darwin", "x86_64"): "anvil-darwin-amd64",
    ("darwin", "arm64"): "anvil-darwin-arm64",
}


class AnvilError(TallyError):
    """anvil is missing, or did not start."""

    kind = "unavailable"


def find_anvil() -> Path:
    """The anvil to run: `$TALLY_ANVIL`, else `node_modules/.bin/anvil` in the repository (looked for upward from the
    working directory and from this file), else `anvil` on the PATH."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        path = Path(override)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise AnvilError(f"{ANVIL_ENV}={override} is not an executable file", path=override)
        return path
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "node_modules" / ".bin" / "anvil"
            if candidate.exists():
                return candidate
    found = shutil.which("anvil")
    if found:
        return Path(found)
    raise AnvilError(
        "anvil is not installed: run `npm ci` in the repository root (`make test` does), "
        f"or set {ANVIL_ENV} to an anvil binary"
    )


def native_binary(path: Path) -> Path:
    """The platform binary behind npm's node wrapper (`node_modules/.bin/anvil` -> `@foundry-rs/anvil/bin.mjs`),
    so a stop signal reaches anvil itself and no node process starts; `path` itself when it is not the wrapper."""
    resolved = path.resolve()
    if resolved.suffix != ".mjs":
        return path
    package = _PLATFORM_PACKAGES.get((os.uname().sysname.lower(), os.uname().machine))
    if package is None:
        return path
    binary = resolved.parent.parent / package / "bin" / "anvil"
    return binary if binary.is_file() and os.access(binary, os.X_OK) else path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class AnvilNode:
    """One anvil process on 127.0.0.1."""

    def __init__(
        self,
        chain_id: int = 31337,
        *,
        state: Path | None = None,
        binary: Path | None = None,
        block_time: float | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 30.0,
    ) -> None:
        self.chain_id = chain_id
        self.state = Path(state) if state is not None else None
        self.binary = binary
        self.block_time = block_time
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.command: list[str] = []
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise AnvilError("anvil is not running: start() it first")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> AnvilNode:
        if self.running:
            return self
        binary = native_binary(self.binary or find_anvil())
        for attempt in range(3):
            port = free_port(self.host)
            command = [str(binary), "--host", self.host, "--port", str(port), "--chain-id", str(self.chain_id)]
            command.append("--silent")
            if self.state is not None:
                command += ["--state", str(self.state)]
            if self.block_time is not None:
                command += ["--block-time", f"{self.block_time:g}"]
            command += self.extra_args
            self.command, self.port = command, port
            self._log = tempfile.TemporaryFile()  # noqa: SIM115  # closed by stop()
            self._process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
            )
            if self._wait_ready():
                return self
            output = self._output()
            self.stop()
            if "in use" in output.lower() and attempt < 2:
                continue  # another process took the port between our probe and anvil's bind
            raise AnvilError(
                f"anvil did not answer JSON-RPC within {self.start_timeout:g} s: {' '.join(command)}\n{output}",
                command=command,
                output=output,
            )
        raise AssertionError("unreachable")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (anvil writes its `state` file then), then SIGKILL if it has not ended within `timeout`."""
        process, self._process = self._process, None
        if process is not None:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
            else:
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        self.port = None

    def rpc(self, method: str, params: Sequence[Any] = (), timeout: float = 10.0) -> Any:
        """One JSON-RPC call (for checks that need no web3)."""
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)}).encode()
        request = urllib.request.Request(self.url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            answer = json.loads(response.read())
        if "error" in answer:
            raise AnvilError(f"anvil answered {method} with an error: {answer['error']}", method=method)
        return answer["result"]

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                if int(self.rpc("eth_chainId", timeout=1.0), 16) == self.chain_id:
                    return True
            except (OSError, urllib.error.URLError, ValueError, AnvilError):
                pass
            time.sleep(0.02)
        return False

    def _output(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read()[-4000:].decode(errors="replace")

    def __enter__(self) -> AnvilNode:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


__all__ = ["ANVIL_DEV_ADDRESS", "ANVIL_DEV_KEY", "ANVIL_ENV", "AnvilError", "AnvilNode", "find_anvil", "free_port"]
