"""Putting a trained adapter in place, recording it and serving it, so that a crash at any point leaves either no
adapter or a complete one (docs/reliability.md).

The steps, each durable before the next begins:

1. every file is written in the staging directory (`.<name>.partial`) and fsynced, then the directory;
2. the staging directory is renamed to the adapter's, and the parent directory fsynced (the rename is on disk);
3. ONE database transaction: the `factory_adapters` row, the `factory.adapter_trained` entry and, when it is
   published, the `factory.adapter_published` entry and its `factory_publications` row (`pending`);
4. the registry file (`adapters.json`, what the engine serves) is replaced with one naming it;
5. the publication row becomes `registered`.

A crash before 2 leaves only the staging directory (resumable). Between 2 and 3, an adapter directory that no row
names: `recover` (at every worker's start, and `tally serve`'s) renames it back into staging, and a resumed job
or `tally train --resume` redoes 2 and 3 with the same weights, so the same adapter id. Between 3 and 5, a recorded
publication not yet served: `recover` writes the registry. So nothing is ever served without its ledger entries,
and no served path ever holds half an adapter. A failure inside 3 (a name claimed meanwhile) renames the
directory back too.

Steps 2 to 5, and `recover`, run under one lock file (`<data_dir>/adapters/.lock`, flock): a recovery never
mistakes another process's adapter, between its rename and its commit, for a leftover.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.engine.errors import AdapterValidationError
from tally.engine.manifest import AdapterManifest
from tally.engine.registry import add as registry_add
from tally.engine.registry import read_registry, registry_path
from tally.factory.errors import FactoryError
from tally.factory.events import AdapterPublished, AdapterTrained
from tally.factory.guard import check_free, check_name, shown
from tally.factory.tables import AdapterRow, PublicationRow
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts
from tally.store import Store


def crash_point(step: str) -> None:
    """A named point between two durable steps. It does nothing; the fault-injection tests replace it with a
    SIGKILL of the process, to check what each point leaves behind (tests/factory/test_crash_publication.py)."""


@contextmanager
def file_lock(path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """An exclusive flock on `path` (created if missing, never deleted: deleting a lock file races its users).
    Yields whether it was taken (always, when blocking). The kernel drops it when the process dies."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def publish_lock(settings: Settings) -> AbstractContextManager[bool]:
    """Held from the rename to the registry write, and by `recover`."""
    return file_lock(settings.data_dir / "adapters" / ".lock")


JOB_MARKER = ".job"  # in a staging (then adapter) directory: the job that wrote it, as {"job": id}


def read_marker(directory: Path) -> str | None:
    try:
        return str(json.loads((directory / JOB_MARKER).read_text())["job"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def staging_dir(out: Path) -> Path:
    """Where a run writes until it finishes: beside the adapter (so the final rename stays on one filesystem) and
    hidden (an output name starts with a letter or digit, so it can never be an adapter's own name)."""
    return out.parent / f".{out.name}.partial"


def staging_lock_path(stage: Path) -> Path:
    return stage.with_name(stage.name + ".lock")


@contextmanager
def staging_lock(stage: Path) -> Iterator[None]:
    """Held by the process training into `stage` for the whole run: a second process (a worker that took over a
    job from one that was only slow, `tally train` on the same output) is refused instead of writing beside it."""
    with file_lock(staging_lock_path(stage), blocking=False) as taken:
        if not taken:
            raise StagingBusy(stage)
        yield


class StagingBusy(FactoryError):
    """Another process on this machine is training into the same staging directory."""

    kind = "conflict"

    def __init__(self, stage: Path) -> None:
        super().__init__(f"another process is training into {stage}; wait for it or cancel its job")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_tree(root: Path) -> None:
    """fsync every file and directory under `root`, files before the directories that hold them, then `root`."""
    for path in sorted(root.rglob("*"), reverse=True):
        fsync_path(path)
    fsync_path(root)


def move_into_place(settings: Settings, stage: Path, out: Path, name: str) -> None:
    """Steps 1-2: sync, then rename the staging directory to the adapter's. An adapter that appeared meanwhile is a
    conflict (a rename never replaces a non-empty directory)."""
    sync_tree(stage)
    crash_point("synced")
    check_free(settings, out, name)
    try:
        os.rename(stage, out)
    except OSError:
        check_free(settings, out, name)  # names the conflict when another run got there first
        raise
    fsync_path(out.parent)  # the rename itself survives a crash
    crash_point("renamed")


def move_back(out: Path, stage: Path) -> None:
    """Undo step 2: the adapter directory goes back to staging (its checkpoints let a resume finish it)."""
    os.rename(out, stage)
    fsync_path(out.parent)


def check_identical(session: Session, principal: Principal, adapter_hash: str) -> None:
    """Identical bytes have one id and one row: the developer who trained them first keeps them."""
    same = session.get(AdapterRow, adapter_hash)
    if same is not None and same.created_by != principal.address:
        raise FactoryError(
            f"an identical adapter ({same.name!r}, {adapter_hash[:12]}) was already trained by {same.created_by}; "
            "train with another train.seed for an adapter of your own",
            kind="conflict", param="output.name", adapter_hash=adapter_hash,
        )  # fmt: skip


def check_publishable(
    settings: Settings, session: Session, principal: Principal, name: str, directory: Path, adapter_id: str
) -> None:
    """Refuse a publication before anything is written: only the adapter's developer (its row says who) or an admin
    publishes it, a served name is never re-pointed away from another developer's adapter, and the directory must
    be one the registry accepts (checked by the registry's own code, on a scratch copy of the file)."""
    row = session.get(AdapterRow, adapter_id)
    if row is not None and row.created_by != principal.address and not principal.has("admin"):
        raise FactoryError(
            f"adapter {row.name!r} was trained by {row.created_by}; only its developer or an admin publishes it",
            kind="forbidden", adapter=row.name,
        )  # fmt: skip
    if not principal.has("admin"):
        check_name(session, principal, name)
    current = read_registry(registry_path(settings.data_dir)).get(name)
    if current is not None and current.adapter_id != adapter_id and not principal.has("admin"):
        owner = session.get(AdapterRow, current.adapter_id)
        if owner is None or owner.created_by != principal.address:
            raise FactoryError(
                f"the served name {name!r} points at another adapter; only its developer or an admin re-points it",
                kind="conflict", param="name", name=name,
            )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tally-registry-check-") as scratch:
        try:
            registry_add(Path(scratch) / "adapters.json", name, directory)
        except AdapterValidationError as exc:  # a bad name or directory
            raise FactoryError(str(exc), param="name", name=name) from None


def _published_event(settings: Settings, name: str, adapter_id: str, out: Path) -> AdapterPublished:
    # the public ledger names the folder relative to the data directory, never a server path
    where = shown(settings, out)
    where = where if where.startswith("<data_dir>/") else out.name  # a folder the operator chose elsewhere
    return AdapterPublished(adapter=name, adapter_hash=adapter_id, path=where)


def _add_publication(
    session: Session, settings: Settings, ledger: Ledger, principal: Principal, name: str, adapter_id: str, out: Path
) -> PublicationRow:
    appended = ledger.append(session, _published_event(settings, name, adapter_id, out), actor=principal.address)
    pub = PublicationRow(
        name=name, adapter_id=adapter_id, path=str(out.resolve()), published_by=principal.address,
        created_at=now_ts(), ledger_seq=appended.seq, state="pending",
    )  # fmt: skip
    session.add(pub)
    session.flush()
    return pub


def commit_adapter(
    settings: Settings, ledger: Ledger, principal: Principal, out: Path, event: AdapterTrained,
    manifest: AdapterManifest, *, publish_as: str | None,
) -> tuple[int, int | None]:  # fmt: skip
    """Step 3: the row and the ledger entries in one transaction; returns (trained entry seq, publication id)."""
    adapter = manifest.adapter
    with ledger.store.transaction() as s:
        check_name(s, principal, adapter.name)  # again: another developer may have claimed it while this one trained
        check_identical(s, principal, adapter.hash)
        appended = ledger.append(s, event, actor=principal.address)
        s.merge(
            AdapterRow(
                id=adapter.hash, name=adapter.name, path=str(out.resolve()),
                base_model=manifest.base_model.name, manifest=manifest.model_dump(mode="json"),
                published=1 if publish_as else 0,
                created_by=principal.address, created_at=now_ts(), ledger_seq=appended.seq,
            )
        )  # fmt: skip
        pub = _add_publication(s, settings, ledger, principal, publish_as, adapter.hash, out) if publish_as else None
        pub_id = pub.id if pub is not None else None
    return appended.seq, pub_id


def is_recorded(store: Store, adapter_id: str, out: Path) -> bool:
    """Whether the row of the adapter at `out` is committed (asked when a commit's outcome is in doubt)."""
    with store.read() as s:
        row = s.get(AdapterRow, adapter_id)
        return row is not None and Path(row.path) == out.resolve()


def record_publication(
    settings: Settings, ledger: Ledger, principal: Principal, name: str, out: Path, adapter_id: str
) -> int:
    """A publication of an adapter already in place (`tally publish`, a pipeline's publish step): its entry and
    row in one transaction; returns the publication's id. The registry is written after, by `register`."""
    with ledger.store.transaction() as s:
        row = s.get(AdapterRow, adapter_id)
        if row is not None:
            row.published = 1
        pub_id = _add_publication(s, settings, ledger, principal, name, adapter_id, out).id
    crash_point("committed")
    return pub_id


def register(settings: Settings, store: Store, pub_id: int) -> dict[str, str]:
    """Steps 4-5: write the registry file for a pending publication, then mark it registered. Idempotent: a
    publication some later one of the same name overtook is marked superseded instead of re-pointing the name."""
    with store.read() as s:
        pub = s.get(PublicationRow, pub_id)
        if pub is None:
            raise FactoryError(f"no publication {pub_id}", kind="not_found")
        later = s.execute(
            select(PublicationRow.id).where(PublicationRow.name == pub.name, PublicationRow.id > pub.id).limit(1)
        ).first()
        name, path, adapter_id, state = pub.name, pub.path, pub.adapter_id, pub.state
    entry = {"name": name, "path": path, "adapter_id": adapter_id}
    if state != "pending":
        return entry
    if later is None:
        registered = registry_add(registry_path(settings.data_dir), name, Path(path))
        entry = {"name": registered.name, "path": registered.path, "adapter_id": registered.adapter_id}
        crash_point("registered")
    with store.transaction() as s:
        pub = s.get(PublicationRow, pub_id)
        assert pub is not None
        pub.state = "registered" if later is None else "superseded"
    return entry
