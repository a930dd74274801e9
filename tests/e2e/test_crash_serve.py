"""A real `tally serve` killed by SIGKILL at random points: while contributors upload, while answers are attributed
and settled, while epochs close, and while its worker trains. After each kill the server is restarted on the same
data directory (its start runs the recovery) and the state is checked: `ledger verify` and the state audit pass,
every write a client saw acknowledged is there in full, and a fine-tuning job killed again and again (up to the
worker's limit on deaths) ends with the adapter an uninterrupted run makes.

Each scenario draws its kill delays and its requests from its own seeded `random.Random`; the seed is printed, and
`TALLY_CRASH_SEED=<seed>` replays them (for every scenario run in that session; the server's own timing still
varies, so a replay repeats the draws, not the exact interleaving)."""

from __future__ import annotations

import json
import os
import random
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.conftest import TEST_POSTGRES, sqlite_only
from tests.e2e.crash_helpers import Server, check_integrity, count, entry_type, scenario_rng
from tests.factory.conftest import (
    PEOPLE,
    people_rows,
    tiny_model,  # noqa: F401 - the session fixture: a 2-layer random Llama
)

from tally.config import Settings
from tally.identity import create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store

pytestmark = pytest.mark.slow

# 50 kills on SQLite; the PostgreSQL pass of `make test` (tests/postgres/run.sh) repeats the first three scenarios with
# fewer (training is SQLite-only). TALLY_CRASH_KILLS=ingest,answers,epochs,training overrides both.
INGEST_KILLS, ANSWER_KILLS, EPOCH_KILLS, TRAIN_KILLS = (
    int(n) for n in os.environ.get("TALLY_CRASH_KILLS", "16,14,12,8" if TEST_POSTGRES is None else "5,5,4,0").split(",")
)


def make_accounts(settings: Settings, *people: tuple[str, list[str]]) -> dict[str, tuple[str, dict[str, str]]]:
    """name -> (address, auth header), created in-process before the first start."""
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    out = {}
    with store.transaction() as s:
        for name, roles in people:
            account, _ = create_account(s, ledger, name, roles)
            _, token = create_api_key(s, ledger, account)
            out[name] = (account.address, {"Authorization": f"Bearer {token}"})
    store.dispose()
    return out


class Clients:
    """Client threads that loop a request until told to stop; what the server acknowledged is kept."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def run(self, loop: Any, *args: Any) -> None:
        def body() -> None:
            with httpx.Client(timeout=60) as http:
                while not self.stopping.is_set():
                    try:
                        loop(http, *args)
                    except httpx.TransportError:
                        time.sleep(0.02)  # the server died under the request: no acknowledgement, nothing owed
                    except Exception as exc:  # reported by the test
                        self.errors.append(repr(exc))
                        return

        thread = threading.Thread(target=body, daemon=True)
        thread.start()
        self.threads.append(thread)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(timeout=90)
        assert not any(t.is_alive() for t in self.threads), "a client thread hung"
        assert not self.errors, self.errors
        self.stopping.clear()
        self.threads.clear()


def crash_loop(
    server: Server, rng: random.Random, kills: int, workload: Any, check: Any, delay: tuple[float, float],
    ready: Any = None,
) -> None:  # fmt: skip
    """kills × (start, check what the last run left, start the workload, SIGKILL after a random delay counted from
    when `ready()` first holds: the workload's first acknowledgement, so the kill lands among writes rather than in
    the first request's warm-up); then a last start, check and clean stop."""
    clients: Clients | None = None
    try:
        for kill in range(kills + 1):
            t0 = time.monotonic()
            server.start()
            t1 = time.monotonic()
            check()
            print(f"  start {t1 - t0:.1f} s, check {time.monotonic() - t1:.1f} s", flush=True)
            if kill == kills:
                break
            clients = workload()
            wait = rng.uniform(*delay)
            if ready is not None:
                deadline = time.monotonic() + 120
                while not ready():
                    assert not clients.errors, clients.errors
                    assert time.monotonic() < deadline, f"no acknowledgement in 120 s\n{server.tail()}"
                    time.sleep(0.02)
            time.sleep(wait)
            server.kill()
            clients.stop()
            clients = None
            print(f"  kill {kill + 1}/{kills} after {wait:.2f} s", flush=True)
        server.stop()
    finally:  # a failed check leaves no server and no client behind
        if clients is not None:
            clients.stopping.set()
        if server.proc is not None:
            server.kill()
    check()


# -- 1. ingestion ---------------------------------------------------------------------------------------------------


def test_kills_during_ingestion(settings: Settings, tmp_path: Path) -> None:
    rng = scenario_rng("ingestion")
    people = make_accounts(settings, ("olga", ["owner"]), ("alice", ["contributor"]), ("bob", ["contributor"]))
    server = Server(settings, tmp_path / "serve.log", TALLY_FACTORY__WORKERS="0", TALLY_MODELS__DEFAULT="none")
    acked: dict[str, int] = {}  # contribution id -> rows
    lock = threading.Lock()
    uploads = iter(range(10**9))
    at_start = [0]

    def upload(http: httpx.Client, who: str, seed: int) -> None:
        local = random.Random(seed)
        with lock:
            n = next(uploads)
        rows = [
            {"instruction": f"upload {n} question {i} of {who}?", "input": "", "output": f"answer {local.random()}"}
            for i in range(local.randint(1, 40))
        ]
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        r = http.post(f"{server.base}/v1/datanets/crash/contributions", files={"file": (f"u{n}.jsonl", data)},
                      headers=people[who][1])  # fmt: skip
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["row_count"] == len(rows)
        with lock:
            acked[body["id"]] = len(rows)

    def workload() -> Clients:
        clients = Clients()
        at_start[0] = len(acked)
        clients.run(upload, "alice", rng.randrange(2**32))
        clients.run(upload, "bob", rng.randrange(2**32))
        return clients

    def acknowledged(s: Any, ledger: Any) -> None:
        from tally.datanets.tables import ContributionRow, DataRow

        for cid, rows in acked.items():
            row = s.get(ContributionRow, cid)
            assert row is not None, f"acknowledged contribution {cid} is missing"
            assert row.row_count == rows
            assert count(s, DataRow.contribution, DataRow.contribution == cid) == rows, cid
            assert entry_type(ledger, row.ledger_seq, s)["type"] == "datanet.contribution_submitted"

    server.start()
    try:
        r = httpx.post(f"{server.base}/v1/datanets", headers=people["olga"][1], json={
            "name": "crash", "kind": "instruction", "license": "CC-BY-4.0", "uses": ["train", "rag"], "policy": "open",
        })  # fmt: skip
        assert r.status_code == 201, r.text
    finally:
        server.stop()
    crash_loop(server, rng, INGEST_KILLS, workload, lambda: check_integrity(settings, acknowledged), (0.0, 1.5),
               ready=lambda: len(acked) > at_start[0])  # fmt: skip
    assert acked, "no upload was acknowledged in any run"
    print(f"  {len(acked)} acknowledged contributions", flush=True)


# -- 2. and 3. answers with attribution, and epochs closing among them --------------------------------------------


def answer_world(settings: Settings, model_dir: Path) -> tuple[dict[str, tuple[str, dict[str, str]]], dict[str, str]]:
    """Accounts, and an open datanet with accepted rows (so the span index has data to match answers against)."""
    from tally.datanets import contribute, service
    from tally.identity import Principal
    from tally.identity.accounts import get_account

    people = make_accounts(settings, ("olga", ["owner", "contributor"]), ("carl", ["consumer"]),
                           ("dora", ["consumer"]), ("root", ["admin"]))  # fmt: skip
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        account = get_account(s, people["olga"][0])
        assert account is not None
        olga = Principal.of(account)
        service.create_datanet(s, ledger, olga, "facts", kind="instruction", license="CC-BY-4.0",
                               uses=["train", "rag"], policy="open", max_upload_bytes=10**7,
                               max_rows_per_day=10**6)  # fmt: skip
        rows = "".join(
            json.dumps({"instruction": f"What is fact {i}?", "input": "", "output": f"Fact {i} is the number {i * 7}."})
            + "\n"
            for i in range(30)
        ).encode()
        contribute.contribute(s, ledger, olga, "facts", rows, "facts.jsonl", settings=settings.datanets,
                              chain_id=settings.chain_id)  # fmt: skip
    store.dispose()
    env = {"TALLY_MODELS__DEFAULT": str(model_dir), "TALLY_FACTORY__WORKERS": "0"}
    return people, env


class Answers:
    """Chat completions with attribution from consumers; every acknowledged answer with its receipt's seq."""

    def __init__(self, server: Server, model: str, people: dict[str, tuple[str, dict[str, str]]]) -> None:
        self.server, self.model, self.people = server, model, people
        self.acked: dict[str, int] = {}  # inference id -> the attribution record's ledger seq (the receipt header)
        self.lock = threading.Lock()

    def ask(self, http: httpx.Client, who: str, local: random.Random) -> None:
        body = {
            "model": self.model, "max_tokens": local.randint(1, 12), "temperature": local.choice([0, 0.8]),
            "messages": [{"role": "user", "content": f"What is fact {local.randrange(30)}?"}],
        }  # fmt: skip
        r = http.post(f"{self.server.base}/v1/chat/completions", json=body, headers=self.people[who][1])
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["attribution"]["id"] == answer["id"]
        with self.lock:
            self.acked[answer["id"]] = int(r.headers["x-tally-receipt"])

    def run(self, clients: Clients, rng: random.Random) -> None:
        for who in ("carl", "dora"):
            clients.run(self.ask, who, random.Random(rng.randrange(2**32)))

    def check(self, s: Any, ledger: Any) -> None:
        """Each acknowledged answer has its attribution record, its ledger entry, and its fee accrued in full."""
        from tally.attribution.tables import AttributionRow
        from tally.rewards.tables import AccrualLineRow, AccrualRow

        with self.lock:
            acked = dict(self.acked)
        for inference, seq in acked.items():
            record = s.get(AttributionRow, inference)
            assert record is not None, f"acknowledged answer {inference} has no attribution record"
            assert record.ledger_seq == seq, (inference, record.ledger_seq, seq)
            entry = entry_type(ledger, seq, s)
            assert entry["type"] == "attribution.inference_attributed" and entry["payload"]["inference"] == inference
            accrual = s.get(AccrualRow, inference)
            assert accrual is not None, f"acknowledged answer {inference} accrued nothing"
            assert entry_type(ledger, accrual.ledger_seq, s)["type"] == "rewards.accrued"
            lines = s.scalars(select(AccrualLineRow.amount).where(AccrualLineRow.inference == inference)).all()
            assert lines and sum(int(a) for a in lines) == int(accrual.fee), (inference, lines, accrual.fee)


def test_kills_while_answering_with_attribution(settings: Settings, tmp_path: Path, tiny_model: Path) -> None:  # noqa: F811
    rng = scenario_rng("answers")
    people, env = answer_world(settings, tiny_model)
    server = Server(settings, tmp_path / "serve.log", **env)
    answers = Answers(server, str(tiny_model), people)
    at_start = [0]

    def workload() -> Clients:
        clients = Clients()
        at_start[0] = len(answers.acked)
        answers.run(clients, rng)
        return clients

    crash_loop(server, rng, ANSWER_KILLS, workload, lambda: check_integrity(settings, answers.check), (0.0, 1.5),
               ready=lambda: len(answers.acked) > at_start[0])  # fmt: skip
    assert answers.acked
    print(f"  {len(answers.acked)} acknowledged answers", flush=True)


def test_kills_while_epochs_close(settings: Settings, tmp_path: Path, tiny_model: Path) -> None:  # noqa: F811
    rng = scenario_rng("epochs")
    people, env = answer_world(settings, tiny_model)
    server = Server(settings, tmp_path / "serve.log", **env)
    answers = Answers(server, str(tiny_model), people)
    epochs: dict[int, str] = {}  # acknowledged epoch number -> its total
    at_start = [0]

    def close(http: httpx.Client, local: random.Random) -> None:
        time.sleep(local.uniform(0.05, 0.6))
        r = http.post(f"{server.base}/v1/rewards/epochs", headers=people["root"][1])
        if r.status_code == 409:  # nothing unpaid yet
            return
        assert r.status_code == 200, r.text
        epochs[int(r.json()["epoch"])] = r.json()["total"]

    def workload() -> Clients:
        clients = Clients()
        at_start[0] = len(epochs)
        answers.run(clients, rng)
        clients.run(close, random.Random(rng.randrange(2**32)))
        return clients

    def acknowledged(s: Any, ledger: Any) -> None:
        from tally.rewards.tables import AccrualLineRow, EpochRow, PayoutRow

        answers.check(s, ledger)
        numbers = s.scalars(select(EpochRow.number).order_by(EpochRow.number)).all()
        assert list(numbers) == list(range(1, len(numbers) + 1)), numbers
        for number, total in epochs.items():
            row = s.get(EpochRow, number)
            assert row is not None, f"acknowledged epoch {number} is missing"
            assert row.total == str(total), (number, row.total, total)
            assert entry_type(ledger, row.ledger_seq, s)["type"] == "rewards.epoch_closed"
            payouts = s.scalars(select(PayoutRow.amount).where(PayoutRow.epoch == number)).all()
            assert len(payouts) == row.accounts and sum(int(a) for a in payouts) == int(row.total), number
            lines = s.scalars(select(AccrualLineRow.amount).where(AccrualLineRow.epoch == number)).all()
            assert sum(int(a) for a in lines) == int(row.total), number

    crash_loop(server, rng, EPOCH_KILLS, workload, lambda: check_integrity(settings, acknowledged), (0.0, 2.0),
               ready=lambda: len(epochs) > at_start[0])  # fmt: skip
    assert epochs
    print(f"  {len(answers.acked)} acknowledged answers, {len(epochs)} acknowledged epochs", flush=True)


# -- 4. training ----------------------------------------------------------------------------------------------------


def train_job(model_dir: Path, name: str, seed: int) -> dict[str, Any]:
    return {"config": {
        "model": {"name": str(model_dir)},
        "method": {"rank": 2, "alpha": 4, "dropout": 0.1, "targets": ["q_proj", "v_proj"]},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 64},
        "train": {"epochs": TRAIN_EPOCHS, "batch_size": 1, "save_steps": 2, "seed": seed},
        "influence": {"dims": 16},
        "output": {"name": name},
    }}  # fmt: skip


TRAIN_EPOCHS = 20  # the most a job may ask for: long enough to be killed several times on a fast machine
JOB_NAMES = ("crash-a", "crash-b", "crash-c")  # different seeds: identical weights would be one adapter


@sqlite_only  # the uninterrupted reference runs in a copy of the data directory, database file included
def test_kills_while_training(settings: Settings, tmp_path: Path, tiny_model: Path) -> None:  # noqa: F811
    from tally.datanets import contribute, service, snapshots
    from tally.factory.lease import MAX_ATTEMPTS
    from tally.factory.tables import AdapterRow, JobRow
    from tally.identity import Principal
    from tally.identity.accounts import get_account

    rng = scenario_rng("training")
    people = make_accounts(settings, ("olga", ["owner", "contributor"]), ("alice", ["contributor"]),
                           ("dev", ["developer"]))  # fmt: skip
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        olga, alice = (Principal.of(get_account(s, people[n][0])) for n in ("olga", "alice"))  # type: ignore[arg-type]
        service.create_datanet(s, ledger, olga, "people", kind="instruction", license="CC-BY-4.0",
                               uses=["train"], policy="open", max_upload_bytes=10**7,
                               max_rows_per_day=10**6)  # fmt: skip
    with store.transaction() as s:
        contribute.contribute(s, ledger, alice, "people", people_rows(PEOPLE), "people.jsonl",
                              settings=settings.datanets, chain_id=settings.chain_id)  # fmt: skip
    with store.transaction() as s:
        snapshots.create_snapshot(s, ledger, olga, "people")
    store.dispose()

    # The reference: the same jobs, never interrupted, in a copy of the data directory made before any is submitted.
    reference_settings = settings.model_copy(update={"data_dir": tmp_path / "reference"})
    shutil.copytree(settings.data_dir, reference_settings.data_dir)
    env = {"TALLY_MODELS__DEFAULT": str(tiny_model), "TALLY_FACTORY__WORKERS": "1"}
    reference = Server(reference_settings, tmp_path / "reference.log", **env)
    server = Server(settings, tmp_path / "serve.log", **env)
    auth = people["dev"][1]

    def submit(srv: Server) -> dict[str, str]:
        ids = {}
        for seed, name in enumerate(JOB_NAMES):
            body = train_job(tiny_model, name, seed)
            r = httpx.post(f"{srv.base}/v1/fine_tuning/jobs", json=body, headers=auth, timeout=60)
            assert r.status_code in (200, 201), r.text
            ids[name] = r.json()["id"]
        return ids

    def jobs(srv: Server, ids: dict[str, str]) -> dict[str, dict[str, Any]]:
        return {name: httpx.get(f"{srv.base}/v1/fine_tuning/jobs/{i}", headers=auth, timeout=30).json()
                for name, i in ids.items()}  # fmt: skip

    def wait_done(srv: Server, ids: dict[str, str], timeout: float) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            now = jobs(srv, ids)
            assert not any(j["status"] in ("failed", "cancelled") for j in now.values()), (now, srv.tail())
            if all(j["status"] == "succeeded" for j in now.values()):
                return now
            assert time.monotonic() < deadline, f"jobs not done in {timeout} s: {now}\n{srv.tail()}"
            time.sleep(0.2)

    reference.start()
    reference_ids = submit(reference)
    try:
        server.start()
        ids = submit(server)
        adapters = settings.data_dir / "adapters" / people["dev"][0].lower()

        def training_moved(since: float) -> str | None:
            """The job whose training step (or resume) this start's worker logged, if any."""
            for name in JOB_NAMES:
                log = adapters / f".{name}.partial" / "trainer_log.jsonl"
                if log.exists() and log.stat().st_mtime > since:
                    return name
            return None

        def acknowledged(s: Any, _ledger: Any) -> None:
            for name, job_id in ids.items():
                row = s.get(JobRow, job_id)
                assert row is not None, f"acknowledged job {job_id} is missing"
                assert row.status in ("queued", "running", "succeeded"), (job_id, row.status, row.error)
                made = s.scalars(select(AdapterRow.id).where(AdapterRow.name == name)).all()
                # a job not yet settled may have recorded its adapter already (its worker finishes it on restart)
                assert len(made) <= 1, (name, made)
                if row.status == "succeeded":
                    assert made == [row.adapter_id], (name, made, row.adapter_id)

        # A job whose worker dies MAX_ATTEMPTS times is failed rather than claimed again (a poison job must not
        # take the workers down forever): each job is killed at most MAX_ATTEMPTS - 1 times, then left to finish.
        kills: dict[str, int] = dict.fromkeys(JOB_NAMES, 0)

        def attempts_running() -> tuple[str, int] | None:
            """The job the worker is running and its claims so far (the deaths of its worker so far, plus one)."""
            store = open_store(settings)
            try:
                with store.read() as s:
                    for name, job_id in ids.items():
                        row = s.get(JobRow, job_id)
                        if row is not None and row.status == "running":
                            return name, row.attempts
            finally:
                store.dispose()
            return None

        while sum(kills.values()) < TRAIN_KILLS:
            now = jobs(server, ids)
            if all(j["status"] == "succeeded" for j in now.values()):
                break
            since, deadline = time.time(), time.monotonic() + 180
            while training_moved(since) is None:
                assert time.monotonic() < deadline, f"no training step in 180 s\n{server.tail()}"
                time.sleep(0.05)
            wait = rng.uniform(0.0, 0.6)
            time.sleep(wait)
            running = attempts_running()
            if running is None or running[1] >= MAX_ATTEMPTS:  # none, or one more death would fail it: let it finish
                wait_done(server, {running[0]: ids[running[0]]} if running else ids, 600)
                continue
            name = running[0]
            server.kill()
            kills[name] += 1
            print(f"  kill {sum(kills.values())}/{TRAIN_KILLS} after {wait:.2f} s of training {name}", flush=True)
            server.start()
            check_integrity(settings, acknowledged)
        crashed = wait_done(server, ids, 600)
        server.stop()
        check_integrity(settings, acknowledged)
        uninterrupted = wait_done(reference, reference_ids, 600)
    finally:
        reference.stop()
        server.stop()
    check_integrity(reference_settings)
    for name in JOB_NAMES:
        assert crashed[name]["adapter_hash"] == uninterrupted[name]["adapter_hash"], (name, crashed, uninterrupted)
    resumed = sum('"type": "resumed"' in (adapters / n / "trainer_log.jsonl").read_text() for n in JOB_NAMES)
    print(f"  {kills} kills; adapters {[crashed[n]['adapter_hash'][:12] for n in JOB_NAMES]} as uninterrupted "
          f"({resumed} of {len(JOB_NAMES)} jobs resumed from a checkpoint)", flush=True)  # fmt: skip
    assert sum(kills.values()) == TRAIN_KILLS, f"the jobs finished after only {kills} kills: make them longer"
