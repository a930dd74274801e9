"""Job rows as the one truth between processes: exactly-once claims, leases that lapse, owners known dead, cancel
flags, local jobs whose process died."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from tally.config import Settings
from tally.factory import lease
from tally.factory.tables import JobRow, PipelineRunRow
from tally.ledger.events import now_ts
from tally.store import Store, open_store

ELSEWHERE = "another-host/boot/pid:[1]|4242|99|abcd1234"  # an owner on another machine: only its heartbeat counts


def _job(store: Store, job_id: str, **fields: object) -> None:
    values: dict = {
        "id": job_id, "status": "queued", "config": {}, "created_by": "0x" + "0" * 40, "created_at": now_ts(),
        "output_dir": f"/nowhere/{job_id}", "kind": "train", "runner": "worker", "attempts": 0, "cancel_requested": 0,
    }  # fmt: skip
    values.update(fields)
    with store.transaction() as s:
        s.add(JobRow(**values))


def _row(store: Store, job_id: str) -> JobRow:
    with store.read() as s:
        row = s.get(JobRow, job_id)
        assert row is not None
        s.expunge(row)
        return row


def _dead_owner() -> str:
    """The owner id of a process on this machine that has exited."""
    out = subprocess.run(
        [sys.executable, "-c", "from tally.factory.lease import owner_id; print(owner_id())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip()


def test_concurrent_workers_claim_each_job_exactly_once(settings: Settings, store: Store) -> None:
    for i in range(30):
        _job(store, f"ftjob-{i:03d}")
    claimed: dict[str, list[str]] = {}
    barrier = threading.Barrier(4)

    def work(n: int) -> None:
        own = open_store(settings)  # each worker its own connections, as separate processes would have
        owner = f"{ELSEWHERE}-{n}"
        mine = claimed.setdefault(owner, [])
        barrier.wait()
        while (row := lease.claim(own, owner)) is not None:
            mine.append(row.id)
        own.dispose()

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [job for jobs in claimed.values() for job in jobs]
    assert sorted(every) == [f"ftjob-{i:03d}" for i in range(30)]  # all taken, none twice
    with store.read() as s:
        rows = [(r.id, r.status, r.attempts, r.lease_owner) for r in s.query(JobRow)]
    assert all(status == "running" and attempts == 1 for _, status, attempts, _ in rows)
    assert all(owner is not None and job in claimed[owner] for job, _, _, owner in rows)  # the row names its claimer


def test_a_silent_owner_loses_the_job_and_learns_it(store: Store) -> None:
    _job(store, "ftjob-a")
    first = lease.claim(store, ELSEWHERE)
    assert first is not None and first.attempts == 1
    assert lease.claim(store, "me|1|1|x") is None  # fresh heartbeat: not anyone else's
    assert lease.heartbeat(store, "ftjob-a", ELSEWHERE, {"step": 3}) == (True, False)
    with store.transaction() as s:
        row = s.get(JobRow, "ftjob-a")
        assert row is not None
        row.heartbeat_at = time.time() - lease.LEASE_S - 1
    second = lease.claim(store, lease.owner_id())
    assert second is not None and second.id == "ftjob-a" and second.attempts == 2
    assert second.started_at == first.started_at and second.progress == {"step": 3}
    assert lease.heartbeat(store, "ftjob-a", ELSEWHERE) == (False, False)  # the old owner finds out...
    assert not lease.finish(store, "ftjob-a", ELSEWHERE, "succeeded")  # ...and cannot write its end
    assert _row(store, "ftjob-a").status == "running"


def test_an_owner_known_dead_on_this_machine_is_replaced_at_once(store: Store) -> None:
    dead = _dead_owner()
    assert not lease.owner_alive(dead) and lease.owner_alive(lease.owner_id()) and lease.owner_alive(ELSEWHERE)
    _job(store, "ftjob-dead", status="running", lease_owner=dead, heartbeat_at=time.time(), attempts=1)
    _job(store, "ftjob-alive", status="running", lease_owner=lease.owner_id(), heartbeat_at=time.time(), attempts=1)
    taken = lease.claim(store, "new-owner")
    assert taken is not None and taken.id == "ftjob-dead" and taken.attempts == 2
    assert lease.claim(store, "new-owner") is None  # the live one stays its owner's


def test_a_job_whose_worker_keeps_dying_fails_instead_of_looping(store: Store) -> None:
    _job(store, "ftjob-x", status="running", lease_owner=_dead_owner(), heartbeat_at=0.0, attempts=lease.MAX_ATTEMPTS)
    assert lease.claim(store, "new-owner") is None
    row = _row(store, "ftjob-x")
    assert row.status == "failed" and "interrupted 5 times" in (row.error or "")
    _job(store, "ftjob-y", status="running", lease_owner=_dead_owner(), heartbeat_at=0.0, attempts=2)
    assert lease.claim(store, "new-owner", max_attempts=3) is not None  # the setting factory.max_job_attempts
    _job(store, "ftjob-z", status="running", lease_owner=_dead_owner(), heartbeat_at=0.0, attempts=2)
    assert lease.claim(store, "new-owner", max_attempts=2) is None
    assert _row(store, "ftjob-z").status == "failed"


def test_cancel_queued_running_and_orphaned(store: Store) -> None:
    _job(store, "ftjob-q")
    lease.request_cancel(store, "ftjob-q")
    assert _row(store, "ftjob-q").status == "cancelled"
    assert lease.claim(store, "w") is None
    _job(store, "ftjob-r")
    assert lease.claim(store, ELSEWHERE) is not None
    lease.request_cancel(store, "ftjob-r")  # the owner is alive: it stops itself
    assert _row(store, "ftjob-r").status == "running"
    assert lease.heartbeat(store, "ftjob-r", ELSEWHERE) == (True, True)
    _job(store, "ftjob-o", status="running", lease_owner=_dead_owner(), heartbeat_at=time.time(), attempts=1)
    lease.request_cancel(store, "ftjob-o")  # nobody would read the flag: cancelled now
    assert _row(store, "ftjob-o").status == "cancelled"


def test_the_lease_thread_heartbeats_reads_the_flag_and_stops_the_job(store: Store) -> None:
    _job(store, "ftjob-l")
    owner = lease.owner_id()
    assert lease.claim(store, owner) is not None
    with lease.Lease(store, "ftjob-l", owner, heartbeat_s=0.05) as held:
        held.listener({"type": "train", "step": 2, "total_steps": 9, "loss": 1.5, "elapsed_s": 1.0})
        time.sleep(0.3)
        assert _row(store, "ftjob-l").progress == {"phase": "training", "step": 2, "total_steps": 9, "loss": 1.5}
        lease.request_cancel(store, "ftjob-l")
        deadline = time.monotonic() + 5
        while not held.cancelled.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            held.listener({"type": "train", "step": 3})
        except lease.JobCancelled:
            pass
        else:
            raise AssertionError("the listener did not stop a cancelled job")


def test_release_requeues_without_counting_an_attempt(store: Store) -> None:
    _job(store, "ftjob-p")
    assert lease.claim(store, ELSEWHERE) is not None
    assert lease.release(store, "ftjob-p", ELSEWHERE)
    row = _row(store, "ftjob-p")
    assert (row.status, row.lease_owner, row.attempts) == ("queued", None, 0)


def test_local_jobs_whose_process_died_are_failed_with_their_pipeline_run(store: Store) -> None:
    with store.transaction() as s:
        s.add(PipelineRunRow(id="run-1", pipeline="p", spec_hash="h", trigger="manual", status="running",
                             created_at=now_ts()))  # fmt: skip
    _job(store, "ftjob-cli", status="running", runner="local", lease_owner=_dead_owner(), heartbeat_at=time.time())
    _job(store, "ftjob-pipe", status="running", runner="local", kind="pipeline", lease_owner=_dead_owner(),
         heartbeat_at=time.time(), payload={"run_id": "run-1"})  # fmt: skip
    _job(store, "ftjob-live", status="running", runner="local", lease_owner=lease.owner_id(), heartbeat_at=time.time())
    assert lease.claim(store, "w") is None  # a worker never takes over a local job
    assert sorted(lease.reap(store)) == ["ftjob-cli", "ftjob-pipe"]
    assert "tally train --resume" in (_row(store, "ftjob-cli").error or "")
    assert _row(store, "ftjob-live").status == "running"
    with store.read() as s:
        run = s.get(PipelineRunRow, "run-1")
        assert run is not None and run.status == "failed" and "interrupted" in (run.error or "")
