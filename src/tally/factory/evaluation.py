"""`evaluate`: score the base model and adapters on datanet snapshots; results go to a table and the ledger.

Rows are read only through `check_use(..., "eval")`. Every model in one call sees exactly the same rows, so the
numbers compare; each (model, datanet snapshot) result is one `factory.evaluated` entry and one table row, and
the leaderboard of a datanet ranks the latest result of each model on that datanet.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.datanets.service import ledger_label
from tally.engine.files import hash_adapter
from tally.engine.manifest import AdapterEvaluations, Evaluation, read_adapter_manifest, write_evaluations
from tally.engine.registry import read_registry, registry_path
from tally.factory.config import SourceCfg
from tally.factory.data import load_examples
from tally.factory.errors import FactoryError
from tally.factory.events import ModelEvaluated
from tally.factory.metrics import evaluate_model
from tally.factory.provenance import CARD_NAME, model_card, write_text_atomic
from tally.factory.tables import AdapterRow, EvalRow
from tally.identity import Principal
from tally.ledger import Ledger
from tally.ledger.events import now_ts
from tally.models import load_model, load_tokenizer, resolve_model

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    model: str
    adapter_hash: str | None
    datanet: str
    snapshot: str
    examples: int
    metrics: dict[str, float]
    samples: list[dict[str, str]]


def find_adapter(settings: Settings, session: Session, name_or_path: str) -> Path:
    """An adapter directory: a path, a trained adapter's name (latest), or a name in adapters.json."""
    path = Path(name_or_path).expanduser()
    if (path / "adapter_config.json").is_file():
        return path
    row = session.execute(
        select(AdapterRow).where(AdapterRow.name == name_or_path).order_by(AdapterRow.created_at.desc()).limit(1)
    ).scalar_one_or_none()
    if row is not None:
        return Path(row.path)
    entry = read_registry(registry_path(settings.data_dir)).get(name_or_path)
    if entry is not None:
        return Path(entry.path)
    raise FactoryError(
        f"no adapter named {name_or_path!r} (not trained here, not in adapters.json, not a directory)", kind="not_found"
    )


def evaluate(
    settings: Settings,
    ledger: Ledger,
    principal: Principal,
    sources: list[SourceCfg],
    *,
    base_model: str | None = None,
    adapters: list[str] | None = None,
    include_base: bool = True,
    max_new_tokens: int = 32,
    batch_size: int = 16,
) -> list[EvalResult]:
    """Evaluate the base model (if `include_base`) and each adapter on each source snapshot; record all."""
    from peft import PeftModel

    base_name = base_model or settings.models.default
    model_dir = resolve_model(base_name, settings.models.cache_dir)
    with ledger.store.read() as s:
        data = load_examples(s, principal, sources, use="eval")
        dirs = [(a, find_adapter(settings, s, a)) for a in adapters or []]
    tok = load_tokenizer(model_dir)
    candidates: list[tuple[str, Path | None]] = [(base_name, None)] if include_base else []
    candidates += dirs
    if not candidates:
        raise FactoryError("nothing to evaluate: give adapters or include the base model")
    results: list[EvalResult] = []
    for name, adir in candidates:
        model = load_model(model_dir)
        if adir is not None:
            model = PeftModel.from_pretrained(model, str(adir))
        for snap in data.snapshots:
            convs = [e.messages for e in data.examples if e.snapshot == snap.id and not e.train_all_tokens]
            if not convs:
                continue
            metrics, samples = evaluate_model(
                model, tok, convs, max_new_tokens=max_new_tokens, batch_size=batch_size
            )  # fmt: skip
            results.append(EvalResult(name, hash_adapter(adir) if adir else None, snap.datanet, snap.id, len(convs),
                                      metrics, samples))  # fmt: skip
    record_results(ledger, principal, results)
    with ledger.store.read() as s:
        for _, adir in dirs:
            refresh_adapter_files(s, adir)
    return results


def adapter_evaluations(session: Session, adapter_hash: str) -> list[Evaluation]:
    """Every recorded evaluation of the weights `adapter_hash`, oldest first."""
    rows = session.execute(select(EvalRow).where(EvalRow.adapter_id == adapter_hash).order_by(EvalRow.id)).scalars()
    return [
        Evaluation(datanet=r.datanet, snapshot=r.snapshot, examples=r.examples, metrics=r.metrics,
                   ledger_seq=r.ledger_seq)
        for r in rows
    ]  # fmt: skip


def refresh_adapter_files(session: Session, adapter_dir: Path) -> None:
    """List every recorded evaluation of the directory's weights in its evaluations.json (attribution credits the
    evaluated datanets' contributors from it) and, for a factory-trained adapter, in its model card.

    The manifest (whose hash is in the ledger) and the weights stay as trained. Both files are derived from the
    evaluation rows, after their transaction: a crash in between leaves them one evaluation behind, and the next
    start's recovery (`tally.factory.recovery`) writes them again.
    """
    adapter_hash = hash_adapter(adapter_dir)
    evals = adapter_evaluations(session, adapter_hash)
    try:
        write_evaluations(adapter_dir, AdapterEvaluations(adapter_hash=adapter_hash, evaluations=evals))
    except OSError as exc:  # the results are recorded (table and ledger); only the credit beside the weights is lost
        log.warning("could not list the evaluations in %s (%s): its evaluators are not credited", adapter_dir, exc)
    manifest = read_adapter_manifest(adapter_dir)
    if manifest is not None:  # an adapter trained elsewhere: its card is not ours to rewrite
        write_text_atomic(adapter_dir / CARD_NAME, model_card(manifest, evals))


def record_results(ledger: Ledger, principal: Principal, results: list[EvalResult]) -> None:
    with ledger.store.transaction() as s:
        for r in results:
            event = ModelEvaluated(
                model=r.model, adapter_hash=r.adapter_hash, datanet=ledger_label(s, ledger, r.datanet),
                snapshot=r.snapshot,
                examples=r.examples, metrics=r.metrics,
            )  # fmt: skip
            seq = ledger.append(s, event, actor=principal.address).seq
            s.add(
                EvalRow(
                    model=r.model, adapter_id=r.adapter_hash, datanet=r.datanet, snapshot=r.snapshot,
                    examples=r.examples, metrics=r.metrics, created_by=principal.address, created_at=now_ts(),
                    ledger_seq=seq,
                )
            )  # fmt: skip


def leaderboard(session: Session, datanet: str, metric: str = "exact_match") -> list[dict[str, Any]]:
    """The latest result of each model on `datanet`, best first (lower is better for loss and perplexity)."""
    rows = session.execute(select(EvalRow).where(EvalRow.datanet == datanet).order_by(EvalRow.id)).scalars()
    latest: dict[str, EvalRow] = {}
    for row in rows:
        latest[row.model] = row
    lower_better = metric in {"loss", "perplexity"}
    sign = 1.0 if lower_better else -1.0
    ranked = sorted(latest.values(), key=lambda r: (r.metrics.get(metric) is None, sign * r.metrics.get(metric, 0.0)))
    return [
        {"rank": i + 1, "model": r.model, "adapter": r.adapter_id, "snapshot": r.snapshot, "examples": r.examples,
         metric: r.metrics.get(metric), "metrics": r.metrics, "evaluated_at": r.created_at}
        for i, r in enumerate(ranked)
    ]  # fmt: skip
