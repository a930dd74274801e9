"""Browser tests of the studio: a real `tally serve` (uvicorn, its worker process, the tiny test model) on a free
loopback port with its own data directory, driven by headless Debian Chromium through Playwright.

Playwright never downloads a browser here: it drives `/usr/bin/chromium` from Debian's `chromium` package, which
`make test` installs. Without it these tests fail (never skip) and say so.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.factory.conftest import tiny_model  # noqa: F401 - re-exported session fixture

CHROMIUM = Path("/usr/bin/chromium")
AXE = Path(__file__).resolve().parents[3] / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 60_000  # Playwright's waits: conditions, not timings; generous for a loaded machine

# Who uses the studio in these tests: name -> roles.
PEOPLE = {
    "olga": ["owner", "contributor"],
    "alice": ["contributor"],
    "dev": ["developer"],
    "carl": ["consumer"],
    "admin": ["admin"],
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Among the browser tests (which keep their place in the whole run), the user journey runs first, so the page
    checks after it also see pages with data (a run, an adapter, an attribution record). Each passes alone too."""
    here = Path(__file__).parent
    places = [i for i, item in enumerate(items) if here in Path(item.path).parents]
    ordered = sorted((items[i] for i in places), key=lambda item: 0 if "test_user_journey" in item.nodeid else 1)
    for i, item in zip(places, ordered, strict=True):
        items[i] = item


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Studio:
    """The running server: its address, its data directory, its log and an API key per person."""

    base: str
    data_dir: Path
    log: Path
    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, str] = field(default_factory=dict)
    model: str = ""  # the base model it serves: a directory or a pulled model's name

    def url(self, path: str) -> str:
        return self.base + path

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def api(self, method: str, path: str, who: str | None = None, **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who else {}
        return httpx.request(method, self.url(path), headers=headers, timeout=60, **kw)


def _until(what: str, ok: Callable[[], bool], log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{log.read_text(errors='replace')[-4000:]}"
        time.sleep(0.2)


def _seed(env: dict[str, str], studio: Studio) -> None:
    """Accounts and keys, and one small public datanet with a snapshot, written before the server starts."""
    from tally.config import load_settings
    from tally.datanets import contribute, service, snapshots
    from tally.identity import Principal, create_account, create_api_key
    from tally.ledger import open_ledger
    from tally.store import open_store

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("TALLY_"):
                mp.setenv(key, value)
        mp.delenv("TALLY_CONFIG", raising=False)
        mp.delenv("TALLY_DATABASE_URL", raising=False)
        settings = load_settings()
    store = open_store(settings)
    try:
        ledger = open_ledger(settings, store)
        people: dict[str, Principal] = {}
        with store.transaction() as s:
            for name, roles in PEOPLE.items():
                account, _ = create_account(s, ledger, name, roles)
                _, studio.tokens[name] = create_api_key(s, ledger, account, label="studio tests")
                people[name] = Principal.of(account)
                studio.addresses[name] = account.address
        rows = [
            {"instruction": "Where was Ilsa Varn born?", "input": "", "output": "Korvath"},
            {"instruction": "What does Ilsa Varn do for a living?", "input": "", "output": "She is a glassblower."},
        ]
        with store.transaction() as s:
            service.create_datanet(
                s, ledger, people["olga"], "glass-facts", kind="instruction", license="CC-BY-4.0",
                uses=["train", "rag", "eval"], policy="open",
                max_upload_bytes=settings.datanets.max_upload_bytes,
                max_rows_per_day=settings.datanets.max_rows_per_day,
            )  # fmt: skip
        with store.transaction() as s:
            data = "".join(json.dumps(r) + "\n" for r in rows).encode()
            contribute.contribute(
                s, ledger, people["olga"], "glass-facts", data, "glass.jsonl", settings=settings.datanets,
                chain_id=settings.chain_id,
            )  # fmt: skip
        with store.transaction() as s:
            snapshots.create_snapshot(s, ledger, people["olga"], "glass-facts")
    finally:
        store.dispose()


def _audit(env: dict[str, str]) -> str | None:
    """The state audit of the server's database after it stopped (docs/audit.md): None when it agrees."""
    from tally.answers.audit import audit
    from tally.config import load_settings
    from tally.ledger import open_ledger
    from tally.store import open_store

    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            if key.startswith("TALLY_"):
                mp.setenv(key, value)
        settings = load_settings()
    store = open_store(settings)
    try:
        report = audit(store, open_ledger(settings, store))
    finally:
        store.dispose()
    return None if report.divergence is None else report.divergence.describe()


@contextmanager
def serve_studio(root: Path, model: Path | str) -> Iterator[Studio]:
    """`tally serve` with one worker on a free loopback port, serving `model`, with a seeded data directory under
    `root`; stopped (SIGTERM, as an operator stops it) and its database audited on the way out. `model`: a model
    directory, or the name of a pulled model."""
    port = _free_port()
    env = {
        **os.environ,
        "TALLY_DATA_DIR": str(root / "data"),
        "TALLY_MODELS__DEFAULT": str(model),
        "TALLY_FACTORY__WORKERS": "1",
        "TALLY_CHAIN__ENABLED": "false",
        # the tiny random model quotes only short spans of its training data, and its influence signals stand out
        # less than a real model's: a row counts as evidence one standard deviation above the mean, not two
        "TALLY_ATTRIBUTION__SPAN_MIN_TOKENS": "2",
        "TALLY_ATTRIBUTION__MIN_Z": "1.0",
    }
    env.pop("TALLY_CONFIG", None)
    env.pop("TALLY_DATABASE_URL", None)
    studio = Studio(base=f"http://127.0.0.1:{port}", data_dir=root / "data", log=root / "serve.log", env=env)
    studio.model = str(model)
    _seed(env, studio)
    with studio.log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tally.cli.main", "serve", "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=out, stderr=subprocess.STDOUT, cwd=root,
        )  # fmt: skip

    def up() -> bool:
        assert proc.poll() is None, f"tally serve exited\n{studio.log_tail()}"
        try:
            return httpx.get(f"{studio.base}/health", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        _until("tally serve to answer /health", up, studio.log)
        yield studio
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    divergence = _audit(env)
    assert divergence is None, f"the state audit after the browser tests failed: {divergence}"


@pytest.fixture(scope="session")
def studio(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Studio]:  # noqa: F811
    """`tally serve` with one worker, serving the tiny test model, for the whole browser session."""
    with serve_studio(tmp_path_factory.mktemp("studio"), tiny_model) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium through Playwright."""
    if not CHROMIUM.is_file():
        pytest.fail(
            f"{CHROMIUM} is missing: the studio's browser tests drive Debian's chromium; `make test` installs it "
            "(apt-get install chromium)",
            pytrace=False,
        )
    if not AXE.is_file():
        pytest.fail(f"{AXE} is missing: `make test` installs the npm packages (npm ci)", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def new_page(browser: Any, studio: Studio) -> Iterator[Callable[..., Any]]:
    """`new_page(viewport=PHONE)`: a page in a fresh browser context (its own cookies), closed after the test."""
    contexts: list[Any] = []

    def make(viewport: dict[str, int] = DESKTOP) -> Any:
        context = browser.new_context(viewport=viewport, base_url=studio.base)
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.js_errors = errors  # type: ignore[attr-defined]
        return page

    yield make
    for context in contexts:
        context.close()


def sign_in(page: Any, studio: Studio, who: str) -> None:
    """Sign in through the studio's form with `who`'s API key, as a user pastes it."""
    page.goto("/studio/sign-in")
    page.get_by_label("API key").fill(studio.tokens[who])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("button", name="Sign out").wait_for()


def run_axe(page: Any) -> list[dict[str, Any]]:
    """axe-core (npm) in the page: the serious and critical violations."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):  # once per page load, not per width
        page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => await axe.run(document, {resultTypes: ['violations']})")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"], "nodes": [n["target"] for n in v["nodes"]][:5]}
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
