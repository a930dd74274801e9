"""`train`: the one function the CLI, the job API and pipelines call to fine-tune an adapter.

Order matters for trust: permissions and licenses are checked before any model is loaded; the adapter, card,
manifest and index are written before the ledger entry that names their hashes; the ledger entries and the
adapter's table row commit in one transaction.

Training writes into a hidden staging directory beside the adapter's (`.<name>.partial`, where a resume finds its
checkpoints); only a finished adapter, its files synced, is renamed into place, and never over an existing one.
What a crash between any two of those steps leaves, and how the next start settles it: `tally.factory.publication`.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.config.errors import TallyError
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
    read_adapter_manifest,
)
from tally.engine.registry import read_registry, registry_path
from tally.factory import publication
from tally.factory.config import TrainConfig
from tally.factory.data import load_examples, split
from tally.factory.encode import encode, pad_id
from tally.factory.errors import FactoryError
from tally.factory.events import AdapterTrained
from tally.factory.guard import check_free, check_name, check_rows
from tally.factory.index_build import build_index
from tally.factory.lease import ACTIVE, JobCancelled, Lease, finish, local_job
from tally.factory.provenance import (
    CARD_NAME,
    base_model_hash,
    model_card,
    stabilise_adapter_config,
    write_manifest,
)
from tally.factory.publication import (
    JOB_MARKER,
    check_identical,
    check_publishable,
    commit_adapter,
    is_recorded,
    move_back,
    move_into_place,
    publish_lock,
    read_marker,
    record_publication,
    register,
    staging_dir,
    staging_lock,
)
from tally.factory.recovery import roll_back_orphan
from tally.factory.tables import AdapterRow, JobRow, PublicationRow
from tally.factory.trainer import Loop
from tally.factory.trainlog import LOG_NAME, Listener, TrainLog, plot_loss
from tally.identity import Principal
from tally.ledger import Ledger
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
    job: Lease | None = None,
    job_id: str | None = None,
) -> TrainResult:
    """Fine-tune per `cfg`; `stop_after` ends early without outputs (an interruption, for tests). `pipeline`
    ({name, step, author}) goes into the manifest when a pipeline step trains, so attribution can credit its author.
    `limits` caps the rows (API jobs); the developer credited is always `principal`, never anything in `cfg`.

    Every training is a job row. A worker passes the `job` it claimed (and its id as `job_id`, which the staging
    directory records so that only that job resumes from it); a pipeline passes its own job; any other caller
    (`tally train`) gets a job row run by this process, so the API shows its state and can cancel it."""
    if job is not None:
        return _train(settings, ledger, principal, cfg, resume=resume, listeners=listeners, stop_after=stop_after,
                      pipeline=pipeline, limits=limits, job=job, job_id=job_id)  # fmt: skip
    final = output_dir(settings, cfg, principal.address)

    def not_training(session: Session) -> None:
        check_not_training(session, final, cfg.output.name)

    lease = local_job(
        ledger.store, kind="train", created_by=principal.address, config=cfg.model_dump(mode="json"),
        output_dir=str(final), payload=principal_payload(principal), conflict=not_training,
    )  # fmt: skip
    store, owner = ledger.store, lease.owner
    with lease:
        try:
            result = _train(settings, ledger, principal, cfg, resume=resume, listeners=listeners,
                            stop_after=stop_after, pipeline=pipeline, limits=limits, job=lease)  # fmt: skip
        except (JobCancelled, KeyboardInterrupt):
            finish(store, lease.job_id, owner, "cancelled", progress=lease.progress)
            raise FactoryError(
                f"training cancelled (job {lease.job_id}); `--resume` continues from its last checkpoint",
                kind="conflict", job=lease.job_id,
            ) from None  # fmt: skip
        except BaseException as exc:
            finish(store, lease.job_id, owner, "failed", error=f"{type(exc).__name__}: {exc}", progress=lease.progress)
            raise
        if result.manifest is None:
            finish(
                store,
                lease.job_id,
                owner,
                "failed",
                progress=lease.progress,
                error="stopped before the end of training; `--resume` continues from its last checkpoint",
            )
        else:
            finish(store, lease.job_id, owner, "succeeded", adapter_id=result.adapter_hash,
                   metrics=result.manifest.metrics.model_dump(), progress=lease.progress)  # fmt: skip
    return result


def already_trained(
    settings: Settings, ledger: Ledger, principal: Principal, cfg: TrainConfig, *, job_id: str | None = None
) -> TrainResult | None:
    """The result of this very training if a run was killed after committing it (before it could say so): the output
    directory holds an adapter recorded at that path by `principal` and, with `job_id`, moved there by that job
    (its `.job` marker travels with the directory). A job or pipeline step taken up again then ends with it, rather
    than failing on an output directory that already exists."""
    final = output_dir(settings, cfg, principal.address)
    if job_id is not None and read_marker(final) != job_id:
        return None
    try:
        manifest = read_adapter_manifest(final)
    except TallyError:
        return None
    if manifest is None:
        return None
    with ledger.store.read() as s:
        row = s.get(AdapterRow, manifest.adapter.hash)
        if row is None or Path(row.path) != final.resolve() or row.created_by != principal.address:
            return None
        return TrainResult(True, final, row.id, manifest, row.ledger_seq)


def check_not_training(session: Session, final: Path, name: str) -> None:
    """One job at a time per adapter directory: a second would write into the same staging directory."""
    active = select(JobRow.id).where(JobRow.output_dir == str(final), JobRow.status.in_(ACTIVE), JobRow.kind == "train")
    running = session.execute(active.limit(1)).scalar()
    if running is not None:
        raise FactoryError(
            f"a job ({running}) already trains adapter {name!r}; wait for it, cancel it, or choose another "
            "output.name",
            kind="conflict", param="output.name", name=name, job=running,
        )  # fmt: skip


def principal_payload(principal: Principal) -> dict[str, Any]:
    """Who a job trains as, exactly as they were when it was submitted (their key's roles, not their account's)."""
    return {"principal": {"address": principal.address, "name": principal.name, "roles": sorted(principal.roles),
                          "key_id": principal.key_id}}  # fmt: skip


def _prepare_staging(
    settings: Settings, ledger: Ledger, final: Path, stage: Path, name: str, resume: bool, job_id: str | None,
    writer: str,
) -> bool:  # fmt: skip
    """Make the staging directory ready; returns whether the run resumes from it. An adapter directory left by a
    crash between its rename and its commit goes back to staging first (a resume then finishes it). `job_id` (a
    worker's job) resumes only from its own checkpoints; `writer`, the job this run records its state in, is written
    in the directory (`.job`, which moves with it), so a start can tell a directory this installation left behind."""
    roll_back_orphan(settings, ledger.store, final)
    check_free(settings, final, name)
    if resume and job_id is not None and read_marker(stage) != job_id:
        resume = False  # another run's checkpoints: this job starts afresh
    if stage.exists() and not resume:
        shutil.rmtree(stage)  # a fresh run: whatever an interrupted one left there is stale
    stage.mkdir(parents=True, exist_ok=True)
    (stage / JOB_MARKER).write_text(json.dumps({"job": writer}))
    return resume


def _train(
    settings: Settings, ledger: Ledger, principal: Principal, cfg: TrainConfig, *, resume: bool,
    listeners: list[Listener] | None, stop_after: int | None, pipeline: dict[str, str] | None,
    limits: FactoryLimits | None, job: Lease, job_id: str | None = None,
) -> TrainResult:  # fmt: skip
    with ledger.store.read() as s:
        check_name(s, principal, cfg.output.name)
        data = load_examples(s, principal, cfg.data.datanets, commercial=cfg.data.commercial)
    if limits is not None:
        check_rows(limits, len(data.examples))
    train_ex, eval_ex = split(data.examples, cfg.data.eval_fraction, cfg.train.seed)
    model_dir = resolve_model(cfg.model.name, settings.models.cache_dir)
    final = output_dir(settings, cfg, principal.address)
    out = staging_dir(final)
    with staging_lock(out):
        resume = _prepare_staging(settings, ledger, final, out, cfg.output.name, resume, job_id, job.job_id)
        job.check()
        tok = load_tokenizer(model_dir)
        pad = pad_id(tok)
        enc = [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in train_ex]
        enc_eval = [encode(tok, e.messages, cfg.data.max_length, e.train_all_tokens) for e in eval_ex]
        model = build_model(model_dir, cfg)
        log = TrainLog(out / LOG_NAME, [*(listeners or []), job.listener])
        loop = Loop(cfg, model, enc, enc_eval, pad, out, log)
        result = loop.run(resume=resume, stop_after=stop_after, should_stop=job.should_pause)
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
                cfg.train.batch_size, pad, progress, result.influence_weights, cfg.influence.precision,
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
                        datanet=s.datanet,
                        snapshot=s.id,
                        version=s.version,
                        rows=rows_per_snapshot[s.id],
                        license=s.license,
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
        return _finalize(settings, ledger, principal, out, final, manifest, manifest_hash, cfg.output.publish, job)


def _trained_event(ledger: Ledger, manifest: AdapterManifest, manifest_hash: str) -> AdapterTrained:
    adapter = manifest.adapter
    snaps = [s.model_dump(include={"datanet", "snapshot", "rows", "license"}) for s in manifest.data.snapshots]
    with ledger.store.read() as session:  # private datanets are named by their ledger commitment
        for snap in snaps:
            snap["datanet"] = ledger_label(session, ledger, snap["datanet"])
    return AdapterTrained(
        adapter=adapter.name, adapter_hash=adapter.hash, base_model=manifest.base_model.name,
        base_model_hash=manifest.base_model.hash,
        snapshots=snaps,
        config_hash=manifest.config_hash, manifest_hash=manifest_hash,
        index_hash=manifest.influence.hash if manifest.influence else None, metrics=manifest.metrics.model_dump(),
    )  # fmt: skip


def _finalize(
    settings: Settings, ledger: Ledger, principal: Principal, stage: Path, final: Path, manifest: AdapterManifest,
    manifest_hash: str, publish: bool, job: Lease,
) -> TrainResult:  # fmt: skip
    """Rename into place, then the row and both ledger entries in one transaction, then the registry (the steps
    and what a crash between them leaves: `tally.factory.publication`). A publication refused by its checks
    leaves the adapter trained and recorded, unpublished, and raises the refusal."""
    adapter = manifest.adapter
    event = _trained_event(ledger, manifest, manifest_hash)
    refused: FactoryError | None = None
    with ledger.store.read() as s:
        check_identical(s, principal, adapter.hash)  # before the rename: nothing left behind on refusal
        if publish:
            try:
                check_publishable(settings, s, principal, adapter.name, stage, adapter.hash)
            except FactoryError as exc:
                refused = exc
    publish_as = adapter.name if publish and refused is None else None
    with publish_lock(settings):
        job.check()  # a cancelled job, or one another worker took over, publishes nothing
        move_into_place(settings, stage, final, adapter.name)
        try:
            seq, pub_id = commit_adapter(settings, ledger, principal, final, event, manifest, publish_as=publish_as)
        except BaseException:
            if not is_recorded(ledger.store, adapter.hash, final):  # an interrupt may come after the commit
                move_back(final, stage)  # the transaction rolled back: so does the rename
            raise
        publication.crash_point("committed")  # looked up on the module, so fault-injection tests can replace it
        if pub_id is not None:
            register(settings, ledger.store, pub_id)
    if refused is not None:
        raise refused
    return TrainResult(True, final, adapter.hash, manifest, seq)


def publish_adapter(settings: Settings, ledger: Ledger, principal: Principal, name: str, out: Path) -> dict[str, Any]:
    """Register the adapter for serving (adapters.json) and record the publication.

    Only the adapter's developer (its table row says who) or an admin publishes it, and a served name is never
    re-pointed away from another developer's adapter. The publication's entry and row commit before the registry
    file names the adapter, so nothing is served without its record (a crash between: `recover` finishes it).

    Idempotent: publishing the adapter the name already serves, from the same directory, records nothing new (a
    pipeline's publish step run again after an interruption does exactly that)."""
    adapter_id = hash_adapter(out)
    with ledger.store.read() as s:
        check_publishable(settings, s, principal, name, out, adapter_id)
    with publish_lock(settings):
        with ledger.store.read() as s:
            latest = s.execute(
                select(PublicationRow).where(PublicationRow.name == name).order_by(PublicationRow.id.desc()).limit(1)
            ).scalar()
            same = latest is not None and (latest.adapter_id, latest.path) == (adapter_id, str(out.resolve()))
            pending = latest is not None and latest.state == "pending"
            pub_id = latest.id if latest is not None else None
        served = read_registry(registry_path(settings.data_dir)).get(name)
        serving = served is not None and (served.adapter_id, Path(served.path)) == (adapter_id, out.resolve())
        if same and pub_id is not None and (pending or serving):
            return register(settings, ledger.store, pub_id)  # already recorded: at most its registry write is left
        pub_id = record_publication(settings, ledger, principal, name, out, adapter_id)
        return register(settings, ledger.store, pub_id)
