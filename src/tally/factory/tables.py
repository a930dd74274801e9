"""Factory tables: trained adapters, publications, fine-tuning jobs, evaluation results, pipeline runs and steps."""

from __future__ import annotations

from sqlalchemy import JSON, Float, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base, BigInt


class AdapterRow(Base):
    __tablename__ = "factory_adapters"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # adapter hash (config + weights)
    name: Mapped[str] = mapped_column(String(100), index=True)
    path: Mapped[str] = mapped_column(Text)
    base_model: Mapped[str] = mapped_column(String(256))
    manifest: Mapped[dict] = mapped_column(JSON)
    published: Mapped[int] = mapped_column(Integer, default=0)
    created_by: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)


class PublicationRow(Base):
    """One publication of an adapter under a served name, committed with its `factory.adapter_published` entry.

    Also the outbox of the registry file (`adapters.json`): a publication is `pending` until the file names it,
    then `registered`; one a later publication of the same name overtook before it was written is `superseded`.
    A crash between the commit and the file leaves it `pending`, and the next start writes it (docs/reliability.md).
    """

    __tablename__ = "factory_publications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), index=True)  # the served name
    adapter_id: Mapped[str] = mapped_column(String(64), index=True)
    path: Mapped[str] = mapped_column(Text)
    published_by: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending | registered | superseded


class JobRow(Base):
    __tablename__ = "factory_jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # ftjob-...
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | succeeded | failed | cancelled
    config: Mapped[dict] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[str | None] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32))
    output_dir: Mapped[str] = mapped_column(Text)
    adapter_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict | None] = mapped_column(JSON)
    # What runs it, and the lease that says who is running it now (tally.factory.lease, docs/factory.md#jobs)
    kind: Mapped[str] = mapped_column(String(16), server_default="train", index=True)  # train | pipeline
    runner: Mapped[str] = mapped_column(String(16), server_default="worker")  # worker | local (its own process)
    payload: Mapped[dict | None] = mapped_column(JSON)  # who submitted it, row limits, a pipeline's spec and run
    lease_owner: Mapped[str | None] = mapped_column(String(200))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)  # Unix seconds of the owner's last heartbeat
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    cancel_requested: Mapped[int] = mapped_column(Integer, server_default="0")
    progress: Mapped[dict | None] = mapped_column(JSON)  # the latest training event: step, total_steps, loss...


class EvalRow(Base):
    __tablename__ = "factory_evals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(256), index=True)
    adapter_id: Mapped[str | None] = mapped_column(String(64))
    datanet: Mapped[str] = mapped_column(String(64), index=True)
    snapshot: Mapped[str] = mapped_column(String(64))
    examples: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict] = mapped_column(JSON)
    created_by: Mapped[str] = mapped_column(String(42))
    created_at: Mapped[str] = mapped_column(String(32))
    ledger_seq: Mapped[int] = mapped_column(BigInt)


class PipelineRunRow(Base):
    __tablename__ = "pipeline_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(64))  # manual | watch
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed | cancelled
    created_at: Mapped[str] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)


class PipelineStepRow(Base):
    __tablename__ = "pipeline_steps"

    run_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))  # succeeded | cached | failed | skipped
    input_hash: Mapped[str] = mapped_column(String(64), index=True)
    outputs: Mapped[dict | None] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[str] = mapped_column(String(32))
    finished_at: Mapped[str | None] = mapped_column(String(32))
