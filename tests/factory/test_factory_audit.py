"""The state audit over a trained and published adapter (the tiny model) and a recorded evaluation: clean passes;
an edited manifest (on disk or in its row), edited weights, a flipped publication flag, a publication pointed at
other weights or an edited evaluation is caught, named by table, key and both values."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select, text, update
from tests.datanets.conftest import World
from tests.factory.conftest import make_config

from tally.answers.audit import audit
from tally.datanets.snapshots import get_snapshot
from tally.factory import service
from tally.factory.audit import ADAPTER_FILES, MANIFEST_FILE, MANIFEST_ROW
from tally.factory.evaluation import EvalResult, record_results
from tally.factory.tables import AdapterRow
from tally.ledger import Ledger
from tally.ledger.audit import Divergence


def _divergence(ledger: Ledger) -> Divergence | None:
    return audit(ledger.store, ledger).divergence


def _sql(ledger: Ledger, statement: str, **params: object) -> None:
    with ledger.store.transaction() as s:
        s.execute(text(statement), params)


def test_an_edited_manifest_or_adapter_is_caught(people: World, tiny_model: Path, tmp_path: Path) -> None:
    ledger = people.ledger
    cfg = make_config(tiny_model, tmp_path / "out", output={"publish": True})
    result = service.train(people.settings, ledger, people.dev, cfg)
    assert result.finished and result.adapter_hash
    with ledger.store.read() as s:
        snap = get_snapshot(s, people.owner, "people")
    record_results(ledger, people.dev, [EvalResult("people-lora", result.adapter_hash, "people", snap.id, 8,
                                                   {"exact_match": 0.25, "loss": 1.5}, [])])  # fmt: skip
    report = audit(ledger.store, ledger)
    assert report.clean, report.divergence and report.divergence.describe()
    assert report.tables["factory_adapters"] == 1 and report.tables["factory_evals"] == 1
    assert report.tables["factory_publications"] == 1
    adapter, manifest_file = result.adapter_hash, result.out_dir / "manifest.json"

    original = manifest_file.read_text()
    forged = json.loads(original)
    forged["data"]["train_rows"] += 1  # the file stays well formed: only its hash tells
    manifest_file.write_text(json.dumps(forged, sort_keys=True, indent=1) + "\n")
    d = _divergence(ledger)
    assert d is not None and (d.table, d.key, d.field) == ("factory_adapters", adapter, MANIFEST_FILE)
    assert d.expected != d.found and d.seq is not None
    manifest_file.write_text(original)
    assert _divergence(ledger) is None

    with ledger.store.read() as s:
        stored = s.execute(select(AdapterRow.manifest)).scalar_one()
    edited = json.loads(json.dumps(stored))
    edited["data"]["contributors"][people.bob.address] = 400
    with ledger.store.transaction() as s:  # through the column's JSON type, as on every backend
        s.execute(update(AdapterRow).values(manifest=edited))
    d = _divergence(ledger)
    assert d is not None and (d.table, d.key, d.field) == ("factory_adapters", adapter, MANIFEST_ROW)
    with ledger.store.transaction() as s:
        s.execute(update(AdapterRow).values(manifest=stored))
    assert _divergence(ledger) is None

    weights = result.out_dir / "adapter_model.safetensors"
    kept = weights.read_bytes()
    weights.write_bytes(kept[:-1] + bytes([kept[-1] ^ 1]))
    d = _divergence(ledger)
    assert d is not None and (d.table, d.key, d.field, d.expected) == ("factory_adapters", adapter, ADAPTER_FILES,
                                                                      adapter)  # fmt: skip
    weights.write_bytes(kept)

    _sql(ledger, "UPDATE factory_adapters SET published = 0")
    d = _divergence(ledger)
    assert d is not None and (d.table, d.key, d.field, d.expected, d.found) == (
        "factory_adapters", adapter, "published", 1, 0
    )  # fmt: skip
    _sql(ledger, "UPDATE factory_adapters SET published = 1")

    _sql(ledger, "UPDATE factory_publications SET adapter_id = :a", a="0" * 64)
    d = _divergence(ledger)
    assert d is not None and (d.table, d.field, d.expected) == ("factory_publications", "adapter_id", adapter)
    _sql(ledger, "UPDATE factory_publications SET adapter_id = :a", a=adapter)

    _sql(ledger, "UPDATE factory_evals SET examples = 80")
    d = _divergence(ledger)
    assert d is not None and (d.table, d.field, d.expected, d.found) == ("factory_evals", "examples", 8, 80)
