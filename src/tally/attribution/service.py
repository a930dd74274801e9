"""Attribute one answer: run the signals the mode asks for, combine them into shares, commit the record.

`fast`: verbatim spans, RAG context (when sources were retrieved), representation similarity and gradient cosine
on the index's cached projection, the query's gradient taken over the top `fast_gradient_layers` of the layers the
adapter adapts (the backward stops there; the index's other layers score zero). `full` takes the gradient of every
layer and adds DataInf, TracIn, and `contrast` when `attribution.weights` gives it a weight (the query weighted
toward the answer tokens the adapter made likelier than the base model, Gauss-Newton scored; docs/influence.md; off
by default until the full quality benchmark has measured it). Rows the adapter was not trained on (withdrawn, or an
index's candidate rows) earn nothing. Index signals need the adapter's training-data index (answers of the base
model have spans and context only). Their null is calibrated per adapter and per mode's gradient: the first
`null_probes` answers of each also run a randomly initialised twin (in the same mixed batch) and the null is the
`null_quantile` of the twin's top z-scores; later answers cost one forward and backward. See docs/attribution.md.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.attribution.citations import citations_from, sentence_drops
from tally.attribution.context import context_drops, context_surrogate
from tally.attribution.query import QueryModel
from tally.attribution.record import AttributionRecord, Citation, InferenceAttributed, MethodResult, Mode, text_hash
from tally.attribution.shares import Distribution, Source, combine, index_method, make_evidence, top_z, zscores
from tally.attribution.sources import adapter_credits, contribution_seqs, index_sources, withdrawn_rows
from tally.attribution.spans import SpanIndex, load_or_build
from tally.attribution.tables import AttributionRow, RowInfluence
from tally.config import ATTRIBUTION_MODES, Settings
from tally.config.errors import TallyError
from tally.engine.files import hash_adapter
from tally.influence import INDEX_JSON, IndexScorer, load_index
from tally.ledger import Appended, Ledger
from tally.ledger.canonical import canonical_json
from tally.ledger.events import now_ts
from tally.models import load_tokenizer
from tally.store import Store


class AttributionError(TallyError, ValueError):
    """An answer cannot be attributed as asked (bad mode); an unknown record is raised with kind="not_found"."""


@dataclass
class Answer:
    """One served answer to attribute."""

    inference_id: str
    model: str  # the name the client asked for
    prompt_ids: list[int]
    answer_ids: list[int]
    adapter_dir: Path | None = None  # where the engine read the weights that answered (None: the base model)
    adapter_hash: str | None = None  # the content hash of those weights, as the engine computed it
    question: str | None = None  # with RAG: the question the sources were retrieved for
    chunks: list[Any] = field(default_factory=list)  # tally.rag.RetrievedChunk
    requested_by: str | None = None
    # datanets the requester may read: span evidence comes only from these, so a quote cannot reveal that a text is
    # in a private datanet (None: every datanet, for the operator's own tools)
    readable: frozenset[str] | None = None
    # the engine's hidden states entering layer `states_layer` for the prompt and the answer but its last token:
    # `fast`'s query runs only the layers from there (see query.py); None: the whole forward runs
    states: torch.Tensor | None = None
    states_layer: int | None = None


@dataclass
class Attributed:
    record: AttributionRecord
    row_influence: list[tuple[Source, float]]  # signed gradient z-scores of the strongest rows (reputation)


@dataclass
class _Loaded:
    scorer: IndexScorer
    sources: list[Source]
    projection: dict[str, Any]
    untrained: list[int] = field(default_factory=list)  # candidate rows the adapter was not trained on
    checkpoints: dict[str, Path] = field(default_factory=dict)  # training checkpoints' adapters (TracIn queries)
    null_stats: list[dict[str, float]] = field(default_factory=list)  # the random twin's top z, first answers
    position: dict[tuple[str, str], int] = field(default_factory=dict)  # (datanet, row hash) -> index row

    datanets: set[str] = field(default_factory=set)
    trained: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.position = {(s.datanet, s.row_hash): i for i, s in enumerate(self.sources)}
        self.datanets = {s.datanet for s in self.sources}
        skip = set(self.untrained)
        self.trained = {(s.datanet, s.row_hash) for i, s in enumerate(self.sources) if i not in skip}

    def valid(self, withdrawn: set[tuple[str, str]]) -> torch.Tensor:
        """Rows still accepted: a mask built from the (few) withdrawn rows, not a pass over every row per answer."""
        mask = torch.ones(len(self.sources), dtype=torch.bool)
        gone = [self.position[key] for key in withdrawn if key in self.position] + self.untrained
        if gone:
            mask[gone] = False
        return mask

    def trained_rows(self) -> set[tuple[str, str]]:
        """(datanet, row hash) of the rows the adapter was trained on."""
        return self.trained

    def calibrated(self, method: str) -> int:
        """How many of the random twin's answers measured `method` (the contrastive one runs in `full` mode only)."""
        return sum(method in s for s in self.null_stats)

    def null(self, method: str, quantile: float) -> float:
        values = sorted(s[method] for s in self.null_stats if method in s)
        if not values:
            return math.inf  # never measured: the method cannot beat its null yet
        return values[min(len(values) - 1, int(quantile * len(values)))]


class Attributor:
    """Holds the attribution model, the adapters' index scorers and the span index; thread-safe."""

    def __init__(self, settings: Settings, store: Store, model_dir: Path, base_model: str) -> None:
        self.settings, self.cfg, self.store = settings, settings.attribution, store
        self.base_model = base_model
        self.tokenizer = load_tokenizer(model_dir)
        self.query_model = QueryModel(model_dir, self.cfg.max_adapters)
        self._indexes: dict[str, _Loaded] = {}
        self._lock = threading.Lock()
        self.spans_dir = settings.data_dir / "attribution" / "spans"
        self._span_cache: tuple[SpanIndex, float] | None = None

    def mode_for(self, model: str, requested: str | None) -> Mode:
        mode = requested or self.cfg.models.get(model) or self.cfg.default_mode
        if mode not in ATTRIBUTION_MODES:
            raise AttributionError(f"attribution mode {mode!r} is not one of {', '.join(ATTRIBUTION_MODES)}")
        return mode  # type: ignore[return-value]

    def _index(self, session: Session, adapter_dir: Path, adapter_hash: str) -> _Loaded | None:
        with self._lock:
            if adapter_hash not in self._indexes:
                directory = adapter_dir / "influence"
                if not (directory / INDEX_JSON).is_file():
                    return None
                if hash_adapter(adapter_dir) != adapter_hash:  # replaced since it answered: not its index
                    return None
                index = load_index(directory)
                self._indexes[adapter_hash] = _Loaded(
                    IndexScorer(index), index_sources(session, index.examples), index.meta["projection"],
                    index.untrained(), index.checkpoint_adapters(),
                )  # fmt: skip
            return self._indexes[adapter_hash]

    def span_index(self, session: Session) -> SpanIndex:
        """The span index of all accepted rows; checked against the database at most every `span_refresh_s`."""
        with self._lock:
            now = time.monotonic()
            if self._span_cache is None or now - self._span_cache[1] >= self.cfg.span_refresh_s:
                self._span_cache = (load_or_build(session, self.tokenizer, self.spans_dir), now)
            return self._span_cache[0]

    def attribute(self, answer: Answer, mode: Mode) -> Attributed:
        if mode == "off":
            raise AttributionError("attribution is off for this answer")
        results: dict[str, MethodResult] = {}
        dists: dict[str, Distribution] = {}
        influence: list[tuple[Source, float]] = []
        citations: list[Citation] = []
        with self.store.read() as session:
            loaded = None
            if answer.adapter_dir is not None and answer.adapter_hash:
                loaded = self._index(session, answer.adapter_dir, answer.adapter_hash)
            self._spans(session, answer, results, dists, loaded.trained_rows() if loaded is not None else None)
            if answer.chunks and answer.question:
                citations = self._context(session, answer, results, dists)
            if loaded is not None:
                influence = self._index_signals(session, answer, loaded, mode, results, dists)
            credits = adapter_credits(session, answer.adapter_dir, answer.adapter_hash, self.base_model)
        record = AttributionRecord(
            id=answer.inference_id, mode=mode, model=answer.model, adapter_hash=answer.adapter_hash,
            prompt_hash=text_hash(self.tokenizer.decode(answer.prompt_ids)),
            answer_hash=text_hash(self.tokenizer.decode(answer.answer_ids)),
            prompt_tokens=len(answer.prompt_ids), completion_tokens=len(answer.answer_ids),
            methods=results, shares=combine(results, dists, self.cfg), credits=credits,
            requested_by=answer.requested_by, created_at=now_ts(), citations=citations,
        )  # fmt: skip
        return Attributed(record, influence)

    def _spans(
        self,
        session: Session,
        answer: Answer,
        results: dict[str, MethodResult],
        dists: dict[str, Distribution],
        trained: set[tuple[str, str]] | None = None,
    ) -> None:
        """Verbatim spans; with `trained` (the answering adapter's training rows), a span that some training row holds
        is credited among those rows only: a look-alike row the adapter never saw does not take a trained row's
        quote, however early it was contributed."""
        start = time.perf_counter()
        spans = self.span_index(session).find(answer.answer_ids, self.cfg.span_min_tokens)
        if answer.readable is not None:
            allowed = answer.readable
            spans = [
                replace(span, sources=kept, total=len(kept))
                for span in spans
                if (kept := tuple(k for k in span.sources if k.datanet in allowed))
            ]
        seqs = contribution_seqs(session, {k.contribution for s in spans for k in s.sources})
        tokens: dict[str, float] = {}
        contributions: dict[str, set[str]] = {}
        evidence = []
        for span in spans:
            holders = [k for k in span.sources if (k.datanet, k.row_hash) in trained] if trained else []
            first = min(holders or span.sources, key=lambda k: seqs.get(k.contribution, 1 << 62))  # the original
            tokens[first.contributor] = tokens.get(first.contributor, 0.0) + span.length
            contributions.setdefault(first.contributor, set()).add(first.contribution)
            text = self.tokenizer.decode(answer.answer_ids[span.answer_start : span.answer_end])
            src = Source(first.row_hash, first.datanet, first.contribution, first.contributor, 0)
            evidence.append((span.length, src, (span.answer_start, span.answer_end), text))
        evidence.sort(key=lambda e: -e[0])
        longest = float(evidence[0][0]) if evidence else 0.0
        results["spans"] = MethodResult(
            method="spans",
            top=[make_evidence(s, float(n), answer_span=w, text=t) for n, s, w, t in evidence[: self.cfg.top_k]],
            score=longest, null_score=float(self.cfg.span_min_tokens - 1), beat_null=bool(spans),
            seconds=round(time.perf_counter() - start, 4),
        )  # fmt: skip
        total = sum(tokens.values())
        dists["spans"] = Distribution({k: v / total for k, v in tokens.items()} if total else {}, contributions)

    def _context(
        self, session: Session, answer: Answer, results: dict[str, MethodResult], dists: dict[str, Distribution]
    ) -> list[Citation]:
        start = time.perf_counter()
        question, chunks, cfg = answer.question or "", answer.chunks, self.cfg

        def measure(model: Any) -> Any:
            if len(chunks) <= cfg.citation_loo_max_chunks:
                return context_drops(model, self.tokenizer, question, chunks, answer.answer_ids)
            return context_surrogate(
                model, self.tokenizer, question, chunks, answer.answer_ids, ablations=cfg.citation_ablations,
                alpha=cfg.citation_lasso_alpha, seed=cfg.citation_seed,
            )  # fmt: skip

        ctx = self.query_model.run(answer.adapter_hash if answer.adapter_dir else None, answer.adapter_dir, measure)
        per_sentence = sentence_drops(
            self.tokenizer,
            answer.answer_ids,
            len(chunks),
            ctx,
            cfg.citation_lasso_alpha,
            guess_nats=cfg.citation_guess_nats,
        )
        citations = citations_from(per_sentence, per_sentence.text, chunks, cfg.citation_min_drop)
        weights: dict[str, float] = {}
        contributions: dict[str, set[str]] = {}
        top = []
        for drop in sorted(ctx.chunks, key=lambda d: -d.drop):
            c = chunks[drop.index]
            src = Source(c.row_hash, c.datanet, c.contribution, c.contributor, 0)
            top.append(make_evidence(src, drop.drop))
            if drop.drop >= self.cfg.context_min_drop:
                weights[c.contributor] = weights.get(c.contributor, 0.0) + drop.drop
                contributions.setdefault(c.contributor, set()).add(c.contribution)
        best = max((d.drop for d in ctx.chunks), default=0.0)
        results["context"] = MethodResult(
            method="context", top=top[: self.cfg.top_k], score=round(best, 6), null_score=self.cfg.context_min_drop,
            beat_null=best >= self.cfg.context_min_drop, seconds=round(time.perf_counter() - start, 4),
        )  # fmt: skip
        total = sum(weights.values())
        dists["context"] = Distribution({k: v / total for k, v in weights.items()} if total else {}, contributions)
        return citations

    def _index_signals(
        self,
        session: Session,
        answer: Answer,
        loaded: _Loaded,
        mode: Mode,
        results: dict[str, MethodResult],
        dists: dict[str, Distribution],
    ) -> list[tuple[Source, float]]:
        assert answer.adapter_dir is not None and answer.adapter_hash is not None
        start = time.perf_counter()
        valid = loaded.valid(withdrawn_rows(session, loaded.datanets))
        args = (answer.adapter_hash, answer.adapter_dir, loaded.projection, answer.prompt_ids, answer.answer_ids)
        scorer = loaded.scorer
        # the contrastive query (one more forward of the base, a second row in the batch): `full` mode, when weighted
        contrast = mode == "full" and self.cfg.weights.get("contrast", 0.0) > 0
        # TracIn: one more row per kept training checkpoint, the answer's gradient at its weights; `full` mode
        tracin = mode == "full" and self.cfg.weights.get("tracin", 0.0) > 0 and bool(loaded.checkpoints)
        checkpoints = loaded.checkpoints if tracin else None
        # `fast`: the gradient of the top layers only (the forward still runs them all); its null is its own
        layers = self.cfg.fast_gradient_layers if mode == "fast" else 0
        gradient_null = f"gradient_top{layers}" if layers else "gradient"
        needed = (gradient_null,) + (("contrast",) if contrast else ()) + (("tracin",) if tracin else ())
        if min(loaded.calibrated(m) for m in needed) < self.cfg.null_probes:  # calibrating: the twin rides along
            real, twin = self.query_model.signals_pair(*args, contrast=contrast, checkpoints=checkpoints, layers=layers)
            null_scores = {gradient_null: scorer.cosine(twin.gradient)}
            if not layers:
                null_scores["datainf"] = scorer.datainf(twin.gradient)
            if twin.contrast is not None:
                null_scores["contrast"] = scorer.contrast(twin.contrast)
            if tracin:  # the twin learned nothing, so it has no checkpoints: its one gradient at every one
                null_scores["tracin"] = scorer.tracin({"final": twin.gradient})
            if scorer.has_representation:
                null_scores["representation"] = scorer.representation(twin.hidden)
            loaded.null_stats.append({m: top_z(x, valid) for m, x in null_scores.items()})
        else:
            layer, kept = answer.states_layer, answer.states
            states = (layer, kept) if layers and layer is not None and kept is not None else None
            real = self.query_model.signals(
                *args, contrast=contrast, checkpoints=checkpoints, layers=layers, states=states
            )
        query_s = time.perf_counter() - start
        dup = scorer.row_similarity if scorer.has_representation else None
        methods: list[tuple[str, Any]] = [("gradient", scorer.cosine)]
        if scorer.has_representation:
            methods.insert(0, ("representation", None))
        if mode == "full":
            methods.append(("datainf", scorer.datainf))
            query = real.contrast
            if query is not None:
                methods.append(("contrast", lambda _: scorer.contrast(query)))
            if tracin:
                methods.append(("tracin", lambda g: scorer.tracin({**real.checkpoints, "final": g})))
        influence: list[tuple[Source, float]] = []
        for name, fn in methods:
            t = time.perf_counter()
            s = scorer.representation(real.hidden) if name == "representation" else fn(real.gradient)
            null = loaded.null(gradient_null if name == "gradient" else name, self.cfg.null_quantile)
            z = zscores(s.float(), valid)
            result, dist = index_method(name, z, null, loaded.sources, valid, self.cfg, dup)
            if name == "gradient" and layers:
                result.layers = layers
            result.states_layer = real.from_layer
            result.seconds = round(time.perf_counter() - t + (query_s if name != "representation" else 0.0), 4)
            results[name], dists[name] = result, dist
            if name == "gradient":
                influence = _strongest(z, valid, loaded.sources, self.cfg.top_k)
        return influence


def _strongest(z: torch.Tensor, valid: torch.Tensor, sources: list[Source], k: int) -> list[tuple[Source, float]]:
    """The k most helpful and k most harmful rows by z-score: what reputation accumulates per row."""
    live = torch.nonzero(valid).flatten()
    if live.numel() < 2:
        return []
    z = z[live]
    n = min(k, live.numel())
    picked = dict.fromkeys(torch.topk(z, n).indices.tolist() + torch.topk(-z, n).indices.tolist())
    return [(sources[int(live[p])], float(z[p])) for p in picked]


def record_hash(record: AttributionRecord | dict[str, Any]) -> str:
    """SHA-256 of the record's canonical JSON (pass its JSON dump when you already have one)."""
    dumped = record if isinstance(record, dict) else record.model_dump(mode="json")
    return hashlib.sha256(canonical_json(dumped)).hexdigest()


def commit(session: Session, ledger: Ledger, attributed: Attributed, actor: str) -> Appended:
    """Store the record and its per-row influence, and append its ledger event, in the caller's transaction."""
    record = attributed.record
    if session.get(AttributionRow, record.id) is not None:
        raise AttributionError(f"inference {record.id} already has an attribution record")
    dumped = record.model_dump(mode="json")
    digest = record_hash(dumped)
    event = InferenceAttributed(
        inference=record.id, model=record.model, adapter_hash=record.adapter_hash, prompt_hash=record.prompt_hash,
        answer_hash=record.answer_hash, record_hash=digest, mode=record.mode, shares=record.share_map(),
        beat_null={k: m.beat_null for k, m in record.methods.items()},
    )  # fmt: skip
    appended = ledger.append(session, event, actor=actor)
    session.add(
        AttributionRow(
            id=record.id, model=record.model, adapter_hash=record.adapter_hash, record=dumped,
            record_hash=digest, created_at=record.created_at, ledger_seq=appended.seq,
        )
    )  # fmt: skip
    for src, value in attributed.row_influence:
        session.add(
            RowInfluence(
                inference=record.id, row_hash=src.row_hash, datanet=src.datanet, contributor=src.contributor,
                influence=value,
            )
        )  # fmt: skip
    return appended


def get_record(session: Session, inference_id: str, *, prefix: bool = False) -> tuple[AttributionRecord, int]:
    """A record by its inference id; with `prefix` (the operator's CLI), a unique prefix of it will do."""
    row = session.get(AttributionRow, inference_id)
    if row is None and prefix and inference_id:
        like = inference_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = session.execute(
            select(AttributionRow).where(AttributionRow.id.like(like, escape="\\")).limit(2)
        ).scalars().all()  # fmt: skip
        if len(rows) > 1:
            raise AttributionError(f"more than one attribution record starts with {inference_id!r}; give more of it")
        row = rows[0] if rows else None
    if row is None:
        raise AttributionError(f"no attribution record for inference {inference_id!r}", kind="not_found")
    return AttributionRecord.model_validate(row.record), row.ledger_seq
