"""Factory tables: trained adapters, fine-tuning jobs, evaluation results, pipeline runs and steps."""

from __future__ import annotations

from sqlalchemy import JSON, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from tally.store import Base


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
    ledger_seq: Mapped[int] = mapped_column(Integer)


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
    ledger_seq: Mapped[int] = mapped_column(Integer)


class PipelineRunRow(Base):
    __tablename__ = "pipeline_runs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    trigger: Mapped[str] = mapped_column(String(64))  # manual | watch
    status: Mapped[str] = mapped_column(String(16))  # running | succeeded | failed
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
