"""Fault injection: a process SIGKILLs itself at each point between two durable steps of putting an adapter in
place, recording it and serving it; after a restart's recovery there is either no adapter or a complete one (files,
row, both ledger entries, registry), never a served adapter without its record or a half-written one in place; and
finishing the interrupted run gives the adapter id the crashed run had computed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.datanets.conftest import World
from tests.factory.conftest import make_config

from tally.engine.files import hash_adapter
from tally.engine.registry import read_registry, registry_path
from tally.factory import publication, service
from tally.factory.errors import FactoryError
from tally.factory.jobs import recover
from tally.factory.tables import AdapterRow, JobRow, PublicationRow
from tally.identity import Principal
from tally.ledger.events import decode_entry

CRASHING = """
import json, os, signal, sys
from pathlib import Path
from tally.factory import publication
point, what = sys.argv[1], sys.argv[2]
def crash(step):
    if step == point:
        os.kill(os.getpid(), signal.SIGKILL)
publication.crash_point = crash
from tally.config import Settings
from tally.factory import service
from tally.factory.config import parse_config
from tally.identity import Principal
from tally.ledger import open_ledger
from tally.store import open_store
args = json.loads(sys.stdin.read())
settings = Settings(**args["settings"])
store = open_store(settings)
ledger = open_ledger(settings, store)
p = args["principal"]
who = Principal(p["address"], p["name"], frozenset(p["roles"]))
if what == "train":
    service.train(settings, ledger, who, parse_config(args["config"]))
else:
    service.publish_adapter(settings, ledger, who, args["name"], Path(args["path"]))
sys.exit(3)  # the crash point was never reached
"""


def _crash(w: World, point: str, what: str, **args: Any) -> None:
    who: Principal = w.dev
    body = {"settings": w.settings.model_dump(mode="json"),
            "principal": {"address": who.address, "name": who.name, "roles": sorted(who.roles)}, **args}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", CRASHING, point, what], input=json.dumps(body).encode(),
                          capture_output=True, timeout=300)  # fmt: skip
    assert proc.returncode == -9, proc.stderr.decode()[-3000:]  # killed at the point, nowhere else


def _config(w: World, tiny_model: Path, name: str, seed: int, publish: bool) -> Any:
    cfg = make_config(tiny_model, Path("unused"), train={"seed": seed}, output={"name": name, "publish": publish})
    return cfg.model_copy(update={"output": cfg.output.model_copy(update={"dir": None})})


def _final(w: World, name: str) -> Path:
    return w.settings.data_dir / "adapters" / w.dev.address.lower() / name


def _state(w: World, name: str) -> dict[str, Any]:
    """What exists of adapter `name`: directory, row, ledger entries, registry entry, publications."""
    with w.ledger.store.read() as s:
        rows = [(r.id, r.path, r.published) for r in s.execute(select(AdapterRow).where(AdapterRow.name == name))
                .scalars()]  # fmt: skip
        pubs = [p.state for p in s.execute(select(PublicationRow).where(PublicationRow.name == name)).scalars()]
    entries = [decode_entry(w.ledger.entry(i)) for i in range(w.ledger.size())]
    trained = [e for e in entries if e.type == "factory.adapter_trained" and e.payload["adapter"] == name]
    published = [e for e in entries if e.type == "factory.adapter_published" and e.payload["adapter"] == name]
    final = _final(w, name)
    return {
        "dir": final.is_dir(), "rows": rows, "trained": [e.payload["adapter_hash"] for e in trained],
        "published": [e.payload["adapter_hash"] for e in published], "pubs": pubs,
        "registry": read_registry(registry_path(w.settings.data_dir)).get(name),
        "staging": publication.staging_dir(final).is_dir(),
    }  # fmt: skip


def _assert_none_or_complete(w: World, name: str, *, published: bool = True) -> str | None:
    """The invariant: no adapter at all, or all of it. Returns the adapter id when complete."""
    st = _state(w, name)
    if not st["dir"]:
        assert (st["rows"], st["trained"], st["published"], st["registry"]) == ([], [], [], None), st
        return None
    final = _final(w, name)
    adapter_id = hash_adapter(final)
    assert st["rows"] == [(adapter_id, str(final.resolve()), int(published))], st
    assert st["trained"] == [adapter_id], st
    if published:
        assert st["published"] == [adapter_id] and st["pubs"] == ["registered"], st
        assert st["registry"] is not None and st["registry"].adapter_id == adapter_id
        assert Path(st["registry"].path) == final.resolve()
    return adapter_id


@pytest.mark.parametrize("point", ["synced", "renamed", "committed", "registered"])
def test_a_crash_while_putting_a_trained_adapter_in_place(people: World, tiny_model: Path, point: str) -> None:
    w = people
    seed = ["synced", "renamed", "committed", "registered"].index(point) + 11
    cfg = _config(w, tiny_model, "people-facts", seed, publish=True)
    _crash(w, point, "train", config=cfg.model_dump(mode="json"))
    final, stage = _final(w, "people-facts"), publication.staging_dir(_final(w, "people-facts"))
    before = _state(w, "people-facts")
    computed = hash_adapter(final if before["dir"] else stage)  # the id the crashed run had reached
    assert before["registry"] is None or before["rows"], before  # nothing is ever served without its record

    report = recover(w.settings, w.ledger.store)  # what a worker or `tally serve` does as it starts
    with w.ledger.store.read() as s:
        jobs = [(r.status, r.runner) for r in s.execute(select(JobRow)).scalars()]
    assert jobs == [("failed", "local")] and len(report.failed_jobs) == 1  # the killed `tally train`'s job
    recovered = _assert_none_or_complete(w, "people-facts")
    if point in ("synced", "renamed"):
        assert recovered is None and _state(w, "people-facts")["staging"]
        assert report.rolled_back == ([str(final)] if point == "renamed" else [])
        result = service.train(w.settings, w.ledger, w.dev, cfg, resume=True)  # `tally train --resume`
        assert result.adapter_hash == computed
        assert _assert_none_or_complete(w, "people-facts") == computed
    else:
        assert recovered == computed
        assert len(report.registered) == 1
    assert recover(w.settings, w.ledger.store).lines() == []  # settled: a second start finds nothing to do


@pytest.mark.parametrize("point", ["committed", "registered"])
def test_a_crash_while_publishing_an_existing_adapter(people: World, tiny_model: Path, point: str) -> None:
    w = people
    result = service.train(w.settings, w.ledger, w.dev, _config(w, tiny_model, "people-pub", 5, publish=False))
    assert _assert_none_or_complete(w, "people-pub", published=False) == result.adapter_hash
    _crash(w, point, "publish", name="people-pub", path=str(result.out_dir))
    st = _state(w, "people-pub")
    assert st["published"] == [result.adapter_hash] and st["pubs"] == ["pending"]  # recorded before it is served
    recover(w.settings, w.ledger.store)
    assert _assert_none_or_complete(w, "people-pub") == result.adapter_hash


def test_a_refusal_at_the_commit_puts_the_directory_back(
    people: World, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another developer claims the name while this one trains: the transaction refuses, and the rename is undone."""
    w = people
    cfg = _config(w, tiny_model, "people-race", 9, publish=True)
    calls = {"n": 0}
    check_name = publication.check_name

    def claimed_meanwhile(session: Any, principal: Principal, name: str) -> None:
        calls["n"] += 1
        if calls["n"] > 1:  # the check inside the commit's transaction
            raise FactoryError(f"the adapter name {name!r} belongs to another developer", kind="conflict")
        check_name(session, principal, name)

    monkeypatch.setattr(publication, "check_name", claimed_meanwhile)
    with pytest.raises(FactoryError, match="another developer"):
        service.train(w.settings, w.ledger, w.dev, cfg)
    assert _assert_none_or_complete(w, "people-race") is None
    assert _state(w, "people-race")["staging"]  # ready for a resume once the name question is settled


def test_evaluation_files_a_crash_left_behind_are_rewritten_at_start(people: World, tiny_model: Path) -> None:
    """The evaluation rows and entries commit first; the files beside the weights follow. Killed in between (here:
    the files never written), the next start writes them."""
    from tally.engine.manifest import read_evaluations
    from tally.factory.evaluation import EvalResult, record_results

    w = people
    result = service.train(w.settings, w.ledger, w.dev, _config(w, tiny_model, "people-eval", 6, publish=False))
    assert result.adapter_hash is not None
    done = EvalResult("people-eval", result.adapter_hash, "people", "snap", 8, {"exact_match": 0.5, "loss": 1.0}, [])
    record_results(w.ledger, w.dev, [done])
    assert read_evaluations(result.out_dir, result.adapter_hash) == []
    report = recover(w.settings, w.ledger.store)
    assert report.refreshed == [str(result.out_dir.resolve())]
    [listed] = read_evaluations(result.out_dir, result.adapter_hash)
    assert listed.metrics == {"exact_match": 0.5, "loss": 1.0}
    assert "## Evaluation" in (result.out_dir / "README.md").read_text()
    assert recover(w.settings, w.ledger.store).refreshed == []


def test_publishing_what_a_name_already_serves_records_nothing_new(people: World, tiny_model: Path) -> None:
    """A pipeline's publish step run again after an interruption: one publication, one entry."""
    w = people
    result = service.train(w.settings, w.ledger, w.dev, _config(w, tiny_model, "people-twice", 4, publish=True))
    again = service.publish_adapter(w.settings, w.ledger, w.dev, "people-twice", result.out_dir)
    assert again["adapter_id"] == result.adapter_hash
    st = _state(w, "people-twice")
    assert st["published"] == [result.adapter_hash] and st["pubs"] == ["registered"]


def test_an_adapter_copied_in_from_elsewhere_is_never_moved(people: World, tiny_model: Path, tmp_path: Path) -> None:
    """Only a directory a job of this installation wrote (its `.job` marker names the job) is rolled back; an
    adapter no row records but copied in, or named by a CLI `output.dir`, stays where it is."""
    import shutil

    w = people
    result = service.train(w.settings, w.ledger, w.dev, _config(w, tiny_model, "people-src", 8, publish=False))
    foreign = _final(w, "people-copied")
    shutil.copytree(result.out_dir, foreign)
    (foreign / ".job").unlink()
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["adapter"]["hash"] = "f" * 64  # weights this database never recorded
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    report = recover(w.settings, w.ledger.store)
    assert foreign.is_dir() and report.rolled_back == []
    assert any(str(foreign) in line and "no job here wrote" in line for line in report.leftovers)
    cfg = make_config(tiny_model, foreign, train={"seed": 8}, output={"name": "people-copied"})
    with pytest.raises(FactoryError, match="never overwritten"):
        service.train(w.settings, w.ledger, w.dev, cfg)
    assert (foreign / "adapter_model.safetensors").is_file()
