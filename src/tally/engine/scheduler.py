"""Continuous batching: which sequences run in the next step, and which tokens of theirs.

Every step, all running sequences that finished their prompt decode one token; what is left of the token budget
goes to prompt chunks (chunked prefill), oldest first. Waiting sequences join when a KV row, a slot for their adapter
and budget are free, and their adapter's weights are already in the host cache (otherwise a background load starts
and the sequence waits without holding anything up).

The cap on distinct adapters per step is a scheduling rule: a sequence whose adapter would exceed it stays waiting.
Fairness: admission is oldest first, and sequences of adapters already running may overtake a sequence kept out by
the cap only while it has waited fewer than `fairness_steps` steps; after that nothing overtakes it, so the running
adapters drain and it gets its place. An adapter therefore waits a bounded number of steps, however popular others are.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

from tally.engine.adapters import AdapterWeights
from tally.engine.errors import AdapterNotFoundError, AdapterValidationError, EngineError
from tally.engine.kv_cache import KVCache
from tally.engine.metrics import EngineMetrics
from tally.engine.prefix_cache import PrefixCache
from tally.engine.runner import StepItem
from tally.engine.sequence import SeqState, Sequence
from tally.engine.store import AdapterStore


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 16
    max_tokens_per_step: int = 512
    max_adapters_per_step: int = 16
    fairness_steps: int = 8
    prefetch_depth: int = 8  # waiting sequences whose adapters are loaded ahead


@dataclass
class StepPlan:
    decode: list[tuple[Sequence, StepItem]]
    prefill: list[tuple[Sequence, StepItem]]

    @property
    def empty(self) -> bool:
        return not self.decode and not self.prefill


class Scheduler:
    def __init__(
        self,
        config: SchedulerConfig,
        cache: KVCache,
        store: AdapterStore,
        metrics: EngineMetrics,
        prefixes: PrefixCache | None = None,
    ) -> None:
        self.config = config
        self.cache = cache
        self.prefixes = prefixes or PrefixCache(cache, 0)
        self.store = store
        self.metrics = metrics
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def running_adapters(self) -> set[str]:
        return {s.adapter_id for s in self.running if s.adapter_id}

    def schedule(self) -> tuple[StepPlan, list[tuple[Sequence, EngineError]]]:
        """The next step's plan, and the sequences that failed admission (with the error) to finish with an error."""
        failed: list[tuple[Sequence, EngineError]] = []
        self.store.flush_evictions()
        budget = self.config.max_tokens_per_step
        # grouped by adapter: with few adapters the decode part runs as one segment per adapter (SGMV)
        decode = sorted((s for s in self.running if not s.in_prefill), key=lambda s: s.slot)
        budget -= len(decode)
        self._admit(budget - sum(1 for s in self.running if s.in_prefill), failed)
        plan = StepPlan(
            [(s, StepItem(s.row or 0, [s.output[-1]], s.total_len - 1, s.slot)) for s in decode if s.row is not None],
            [],
        )
        for s in self.running:
            if not s.in_prefill or budget <= 0:
                continue
            assert s.row is not None
            chunk = s.prompt[s.computed : s.computed + budget]
            budget -= len(chunk)
            done = s.computed + len(chunk) == len(s.prompt)
            plan.prefill.append((s, StepItem(s.row, chunk, s.computed, s.slot, want_logits=done)))
        plan.prefill.sort(key=lambda pair: pair[1].slot)  # one contiguous segment per adapter (SGMV)
        self._prefetch()
        self._publish()
        return plan, failed

    def _admit(self, budget: int, failed: list[tuple[Sequence, EngineError]]) -> None:
        adapters = self.running_adapters()
        blocked_old = False  # a sequence kept out by the cap has waited long enough: nothing overtakes it
        for seq in list(self.waiting):
            if budget <= 0 or self.cache.free_rows == 0 or blocked_old:
                break
            weights: AdapterWeights | None = None
            if seq.adapter is not None:
                try:
                    weights = self.store.host_weights(seq.adapter)
                except (AdapterNotFoundError, AdapterValidationError) as exc:
                    self.waiting.remove(seq)
                    failed.append((seq, exc))
                    continue
                if not seq.lookup_counted:
                    seq.lookup_counted = True
                    self.metrics.cache_lookups.labels(result="hit" if weights is not None else "miss").inc()
                if weights is None:
                    continue  # loading in the background; others go ahead
                new_adapter = weights.adapter_id not in adapters
                if new_adapter and (
                    len(adapters) >= self.config.max_adapters_per_step
                    or not self.store.slots.can_place(weights.adapter_id)
                ):
                    seq.blocked_steps += 1
                    blocked_old = seq.blocked_steps > self.config.fairness_steps
                    continue
                slot = self.store.acquire_slot(weights)
                if slot is None:  # pragma: no cover - can_place said yes
                    continue
                seq.slot, seq.adapter_id, seq.adapter_path = slot, weights.adapter_id, weights.path
                adapters.add(weights.adapter_id)
            self.waiting.remove(seq)
            seq.row = self.cache.allocate(id(seq))
            seq.computed = self.prefixes.restore(
                seq.adapter_id, seq.params.cache_salt, seq.prompt, seq.row, seq.states if seq.keep_states else None
            )
            if seq.computed:
                self.metrics.prefix_cached_tokens.inc(seq.computed)
            seq.state = SeqState.RUNNING
            self.running.append(seq)
            budget -= 1

    def _prefetch(self) -> None:
        for seq in list(self.waiting)[: self.config.prefetch_depth]:
            if seq.adapter is not None:
                self.store.prefetch(seq.adapter)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out (finished, cancelled or failed), returning its row and slot."""
        if seq.state is SeqState.RUNNING:
            self.running.remove(seq)
            assert seq.row is not None
            moved = self.cache.release(seq.row)
            if moved is not None:
                owner, row = moved
                for other in self.running:
                    if id(other) == owner:
                        other.row = row
                        break
            if seq.slot:
                self.store.release_slot(seq.slot)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        seq.row, seq.slot = None, 0
        seq.state = SeqState.FINISHED

    def _publish(self) -> None:
        self.metrics.set_queue(
            dict(Counter(s.label for s in self.running)), dict(Counter(s.label for s in self.waiting))
        )
        self.metrics.slots_active.set(self.store.slots.active)
        self.metrics.host_cache_bytes.set(self.store.host.nbytes)
