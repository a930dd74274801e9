"""`train`: the one function the CLI, the job API and pipelines call to fine-tune an adapter.

Order matters for trust: permissions and licenses are checked before any model is loaded; the adapter, card,
manifest and index are written before the ledger entry that names their hashes; the ledger entry and the
adapter's table row commit in one transaction.

Training writes into a hidden staging directory beside the adapter's (`.<name>.partial`, where a resume finds its
checkpoints); only a finished adapter, its files synced, is renamed into place, and never over an existing one.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.config.settings import FactoryLimits
from tally.datanets.service import ledger_label
from tally.engine.files import hash_adapter
from tally.engine.manifest import (
    AdapterManifest,
    AdapterRef,
    BaseModelRef,
    InfluenceSummary,
    PipelineRef,
    SnapshotUse,
    TrainingData,
    TrainMetrics,
)
from tally.engine.registry import read_registry, registry_path
from tally.factory.config import TrainConfig
from tally.factory.data import load_examples, split
from tally.factory.encode import encode, pad_id
from tally.factory.errors import FactoryError
from tally.factory.events import AdapterPublished, AdapterTrained
from tally.factory.guard import check_free, check_name, check_rows, shown
from tally.factory.index_build import build_index
from tally.factory.provenance import (
    CARD_NAME,
    base_model_hash,
    model_card,
    publish,
    stabilise_adapter_config,
    write_manifest,
)
from tally.factory.tables import AdapterRow
from tally.factory.trainer import Loop
from tally.factory.trainlog import LOG_NAME, Listener, TrainLog, plot_loss
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts
from tally.models import load_model, load_tokenizer, resolve_model


@dataclass
class TrainResult:
    finished: bool
    out_dir: Path
    adapter_hash: str | None = None
    manifest: AdapterManifest | None = None  # None until training finished
    ledger_seq: int | None = None


def output_dir(settings: Settings, cfg: TrainConfig, developer: str) -> Path:
    """`output.dir` (the CLI only), else `<data_dir>/adapters/<developer address>/<name>`: one folder per
    developer, so no developer's output can land in another's."""
    if cfg.output.dir:
        return Path(cfg.output.dir)
    return settings.data_dir / "adapters" / developer.lower() / cfg.output.name


def staging_dir(out: Path) -> Path:
    """Where a run writes until it finishes: beside the adapter (so the final rename stays on one filesystem) and
    hidden (an output name starts with a letter or digit, so it can never be an adapter's own name)."""
    return out.parent / f".{out.name}.partial"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _move_into_place(settings: Settings, stage: Path, out: Path, name: str) -> None:
    """Sync every file, then rename the staging directory to the adapter's; an adapter that appeared meanwhile is
    a conflict (rename never replaces a non-empty directory)."""
    for path in sorted(stage.rglob("*"), reverse=True):  # files before the directories that hold them
        _fsync(path)
    _fsync(stage)
    check_free(settings, out, name)
    try:
        os.rename(stage, out)
    except OSError:
        check_free(settings, out, name)  # names the conflict when another run got there first
        raise
    _fsync(out.parent)  # the rename itself survives a crash


def build_model(model_dir: Path, cfg: TrainConfig) -> Any:
    """The base model with fresh LoRA layers, initialised from the run's seed."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(cfg.train.seed)
    m = cfg.method
    lora = LoraConfig(
        r=m.rank,
        lora_alpha=m.alpha,  # type: ignore[arg-type]  # PEFT accepts floats
        lora_dropout=m.dropout,
        target_modules=m.targets,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(load_model(model_dir), lora)


def train(
    settings: Settings,
    ledger: Ledger,
    principal: Principal,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    listeners: list[Listener] | None = None,
    stop_after: int | None = None,
    pipeline: dict[str, str] | None = None,
    limits: FactoryLimits | None = None,
) -> TrainResult:
    """Fine-tune per `cfg`; `stop_after` ends early without outputs (an interruption, for tests). `pipeline`
    ({name, step, author}) goes into the manifest when a pipeline step trains, so attribution can credit its author.
    `limits` caps the rows (API jobs); the developer credited is always `principal`, never anything in `cfg`."""
    with ledger.store.read() as s:
        check_name(s, principal, cfg.output.name)
        data = load_examples(s, principal, cfg.data.datanets, commercial=cfg.data.commercial)
    if limits is not None:
        check_rows(limits, len(data.examples))
    train_ex, eval_ex = split(data.examples, cfg.data.eval_fraction, cfg.train.seed)
    model_dir = resolve_model(cfg.model.name, settings.models.cache_dir)
    final = output_dir(settings, cfg, principal.address)
    check_free(settings, final, cfg.output.name)
    out = staging_dir(final)
    if out.exists() and not resume:
        shutil.rmtree(out)  # a fresh run: whatever an interrupted one left there is stale
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(model_dir)
    pad = pad_id(tok)
    enc = [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in train_ex]
    enc_eval = [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in eval_ex]
    model = build_model(model_dir, cfg)
    log = TrainLog(out / LOG_NAME, listeners)
    loop = Loop(cfg, model, enc, enc_eval, pad, out, log)
    result = loop.run(resume=resume, stop_after=stop_after)
    if result.steps < loop.total and not result.stopped_early:
        return TrainResult(False, out)

    model.save_pretrained(str(out))
    stabilise_adapter_config(out)
    influence = None
    if cfg.influence.enabled:

        def progress(done: int, total: int) -> None:
            log.emit({"type": "index", "done": done, "total": total})

        influence = InfluenceSummary.model_validate(build_index(
            out, model, train_ex, enc, loop.projector, result.influence, result.influence_lr,
            cfg.train.batch_size, pad, progress,
        ))  # fmt: skip
    plot_loss(out / LOG_NAME, out / "loss_curve.png")
    used = Counter(e.contributor for e in data.examples)
    rows_per_snapshot = Counter(e.snapshot for e in data.examples)
    metrics = TrainMetrics(
        train_loss=result.train_loss, eval_loss=result.eval_loss, best_eval_loss=result.best_eval_loss,
        steps=result.steps, tokens=result.tokens, train_seconds=round(result.seconds, 3),
        stopped_early=result.stopped_early,
    )  # fmt: skip
    manifest = AdapterManifest(
        adapter=AdapterRef(name=cfg.output.name, hash=hash_adapter(out), peft="LORA"),
        base_model=BaseModelRef(name=cfg.model.name, hash=base_model_hash(model_dir)),
        data=TrainingData(
            snapshots=[
                SnapshotUse(
                    datanet=s.datanet, snapshot=s.id, version=s.version, rows=rows_per_snapshot[s.id], license=s.license
                )
                for s in data.snapshots
            ],
            contributors=dict(sorted(used.items())),
            train_rows=len(train_ex),
            eval_rows=len(eval_ex),
        ),
        config=cfg.model_dump(mode="json"),
        config_hash=cfg.digest(),
        metrics=metrics,
        influence=influence,
        trained_by=principal.address,
        pipeline=PipelineRef.model_validate(pipeline) if pipeline else None,
    )
    manifest_hash = write_manifest(out, manifest)
    (out / CARD_NAME).write_text(model_card(manifest), encoding="utf-8")
    with ledger.store.read() as s:
        _check_identical(s, principal, manifest.adapter.hash)  # before the rename: nothing left behind on refusal
    _move_into_place(settings, out, final, cfg.output.name)
    return record(settings, ledger, principal, final, manifest, manifest_hash, publish_now=cfg.output.publish)


def record(
    settings: Settings, ledger: Ledger, principal: Principal, out: Path, manifest: AdapterManifest,
    manifest_hash: str, *, publish_now: bool,
) -> TrainResult:  # fmt: skip
    """The ledger entry and table row for a trained adapter, in one transaction; then publish if asked."""
    adapter = manifest.adapter
    snaps = [s.model_dump(include={"datanet", "snapshot", "rows", "license"}) for s in manifest.data.snapshots]
    with ledger.store.read() as session:  # private datanets are named by their ledger commitment
        for snap in snaps:
            snap["datanet"] = ledger_label(session, ledger, snap["datanet"])
    event = AdapterTrained(
        adapter=adapter.name, adapter_hash=adapter.hash, base_model=manifest.base_model.name,
        base_model_hash=manifest.base_model.hash,
        snapshots=snaps,
        config_hash=manifest.config_hash, manifest_hash=manifest_hash,
        index_hash=manifest.influence.hash if manifest.influence else None, metrics=manifest.metrics.model_dump(),
    )  # fmt: skip
    with ledger.store.transaction() as s:
        check_name(s, principal, adapter.name)  # again: another developer may have claimed it while this one trained
        _check_identical(s, principal, adapter.hash)
        appended = ledger.append(s, event, actor=principal.address)
        s.merge(
            AdapterRow(
                id=adapter.hash, name=adapter.name, path=str(out.resolve()),
                base_model=manifest.base_model.name, manifest=manifest.model_dump(mode="json"), published=0,
                created_by=principal.address, created_at=now_ts(), ledger_seq=appended.seq,
            )
        )  # fmt: skip
    result = TrainResult(True, out, adapter.hash, manifest, appended.seq)
    if publish_now:
        publish_adapter(settings, ledger, principal, adapter.name, out)
    return result


def _check_identical(session: Session, principal: Principal, adapter_hash: str) -> None:
    """Identical bytes have one id and one row: the developer who trained them first keeps them."""
    same = session.get(AdapterRow, adapter_hash)
    if same is not None and same.created_by != principal.address:
        raise FactoryError(
            f"an identical adapter ({same.name!r}, {adapter_hash[:12]}) was already trained by {same.created_by}; "
            "train with another train.seed for an adapter of your own",
            kind="conflict", param="output.name", adapter_hash=adapter_hash,
        )  # fmt: skip


def publish_adapter(settings: Settings, ledger: Ledger, principal: Principal, name: str, out: Path) -> dict[str, Any]:
    """Register the adapter for serving (adapters.json) and record the publication.

    Only the adapter's developer (its table row says who) or an admin publishes it, and a served name is never
    re-pointed away from another developer's adapter."""
    adapter_id = hash_adapter(out)
    with ledger.store.read() as s:
        row = s.get(AdapterRow, adapter_id)
        if row is not None and row.created_by != principal.address and not principal.has("admin"):
            raise FactoryError(
                f"adapter {row.name!r} was trained by {row.created_by}; only its developer or an admin publishes it",
                kind="forbidden", adapter=row.name,
            )  # fmt: skip
        if not principal.has("admin"):
            check_name(s, principal, name)
        current = read_registry(registry_path(settings.data_dir)).get(name)
        if current is not None and current.adapter_id != adapter_id and not principal.has("admin"):
            owner = s.get(AdapterRow, current.adapter_id)
            if owner is None or owner.created_by != principal.address:
                raise FactoryError(
                    f"the served name {name!r} points at another adapter; only its developer or an admin re-points it",
                    kind="conflict", param="name", name=name,
                )  # fmt: skip
    entry = publish(settings.data_dir, name, out)
    with ledger.store.transaction() as s:
        row = s.get(AdapterRow, entry["adapter_id"])
        if row is not None:
            row.published = 1
        # the public ledger names the folder relative to the data directory, never a server path
        where = shown(settings, out)
        where = where if where.startswith("<data_dir>/") else out.name  # a folder the operator chose elsewhere
        event = AdapterPublished(adapter=name, adapter_hash=entry["adapter_id"], path=where)
        ledger.append(s, event, actor=principal.address)
    return entry
