"""The adapter store: disk (PEFT directories) -> host cache (LRU, bounded in bytes) -> active slots (bounded count).

* Disk -> host runs on a small thread pool, so a cold adapter never stalls the step loop: the scheduler keeps the
  request waiting (and serves others) until its weights are in the host cache. The waiting queue's head is
  prefetched the same way.
* Host -> slot is a copy into the stacked slot tensors, done on the engine thread between steps.
* A slot used by a running sequence is never evicted (reference counts); only idle slots and unpinned host entries
  are. Pinned adapters stay in the host cache.
* Every cache key is the adapter id (hash of config + weights), never the name. A name re-pointed at new files
  gets a new id, and a file changed in place is noticed by its stat fingerprint and hashed again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tally.engine.adapters import (
    WEIGHTS_FILE,
    AdapterWeights,
    BaseSpec,
    Fingerprint,
    check_directory,
    check_safetensors,
    hash_adapter,
    load_adapter,
    read_config,
)
from tally.engine.errors import AdapterNotFoundError, AdapterValidationError
from tally.engine.lora_layers import MultiLoraLinear
from tally.engine.metrics import EngineMetrics

logger = logging.getLogger(__name__)


@dataclass
class AdapterEntry:
    """A registered name. `adapter_id`/`fingerprint` are known once the files have been read."""

    name: str
    path: Path
    pinned: bool = False
    created: int = field(default_factory=lambda: int(time.time()))
    adapter_id: str | None = None
    fingerprint: Fingerprint | None = None
    error: str | None = None  # the last load failure, reported to the requests that wait for it
    error_stat: Fingerprint | None = None  # the files' fingerprint when that load failed: unchanged files fail again
    checked: bool = False  # the weights file's header was found sound (again after the files change)


def _stat(path: Path) -> Fingerprint | None:
    try:
        return Fingerprint.of(path)
    except OSError:
        return None


def _as_validation_error(name: str, exc: Exception) -> AdapterNotFoundError | AdapterValidationError:
    """Any failure while reading or checking an adapter's files belongs to that adapter alone: a malformed file
    must fail the requests for it with a clear error, never the engine loop that serves everyone else."""
    if isinstance(exc, AdapterNotFoundError | AdapterValidationError):
        return exc
    logger.warning("adapter %r cannot be loaded", name, exc_info=exc)  # the operator sees the path, callers do not
    return AdapterValidationError(
        f"adapter {name!r}: its files cannot be read or are malformed ({_brief(exc)})", adapter=name
    )


def _brief(exc: Exception) -> str:
    """What went wrong, without the server paths an OSError's text carries."""
    if isinstance(exc, OSError):
        where = f" ({Path(exc.filename).name})" if exc.filename else ""
        return f"{type(exc).__name__}: {exc.strerror or 'cannot read'}{where}"
    return f"{type(exc).__name__}: {exc}"


class HostCache:
    """Validated adapter weights by id, least recently used first out, bounded in bytes; pinned ids stay."""

    def __init__(self, capacity_bytes: int, metrics: EngineMetrics) -> None:
        self.capacity = capacity_bytes
        self.metrics = metrics
        self._items: OrderedDict[str, AdapterWeights] = OrderedDict()
        self.pinned: set[str] = set()
        self.nbytes = 0
        self._lock = threading.Lock()

    def __contains__(self, adapter_id: str) -> bool:
        return adapter_id in self._items

    def __len__(self) -> int:
        return len(self._items)

    def get(self, adapter_id: str) -> AdapterWeights | None:
        with self._lock:
            item = self._items.get(adapter_id)
            if item is not None:
                self._items.move_to_end(adapter_id)
            return item

    def put(self, weights: AdapterWeights) -> None:
        with self._lock:
            if weights.adapter_id in self._items:
                self._items.move_to_end(weights.adapter_id)
                return
            self._items[weights.adapter_id] = weights
            self.nbytes += weights.nbytes
            for victim in list(self._items):
                if self.nbytes <= self.capacity:
                    break
                if victim in self.pinned or victim == weights.adapter_id:
                    continue
                self.nbytes -= self._items.pop(victim).nbytes
                self.metrics.evictions.labels(tier="host").inc()

    def drop(self, adapter_id: str) -> None:
        with self._lock:
            item = self._items.pop(adapter_id, None)
            if item is not None:
                self.nbytes -= item.nbytes
            self.pinned.discard(adapter_id)


class SlotTable:
    """Which adapter id sits in which slot (1..n), with reference counts; idle slots are reused LRU first."""

    def __init__(self, n_slots: int, layers: dict[tuple[int, str], MultiLoraLinear], metrics: EngineMetrics) -> None:
        self.n_slots = n_slots
        self.layers = layers
        self.metrics = metrics
        self.slot_of: dict[str, int] = {}
        self.id_of: dict[int, str] = {}
        self.refs = [0] * (n_slots + 1)
        self.idle: OrderedDict[int, None] = OrderedDict((s, None) for s in range(1, n_slots + 1))  # LRU of refs == 0

    def lookup(self, adapter_id: str) -> int | None:
        return self.slot_of.get(adapter_id)

    def can_place(self, adapter_id: str) -> bool:
        return adapter_id in self.slot_of or bool(self.idle)

    def acquire(self, weights: AdapterWeights) -> int | None:
        """A slot holding `weights` with one more reference, loading it into an idle slot if needed; None if full."""
        slot = self.slot_of.get(weights.adapter_id)
        if slot is None:
            if not self.idle:
                return None
            slot, _ = self.idle.popitem(last=False)
            old = self.id_of.pop(slot, None)
            if old is not None:
                del self.slot_of[old]
                self.metrics.evictions.labels(tier="slot").inc()
            for key, layer in self.layers.items():
                pair = weights.tensors.get(key)
                if pair is None:
                    layer.clear_slot(slot)
                else:
                    layer.set_slot(slot, *pair)
            self.slot_of[weights.adapter_id] = slot
            self.id_of[slot] = weights.adapter_id
        self.idle.pop(slot, None)
        self.refs[slot] += 1
        return slot

    def release(self, slot: int) -> None:
        self.refs[slot] -= 1
        if self.refs[slot] == 0:
            self.idle[slot] = None  # stays loaded (a later request may hit it) until reused

    def evict_id(self, adapter_id: str) -> None:
        """Clear an idle slot holding `adapter_id` now (unload); a busy one is cleared when it goes idle and reused."""
        slot = self.slot_of.get(adapter_id)
        if slot is not None and self.refs[slot] == 0:
            for layer in self.layers.values():
                layer.clear_slot(slot)
            del self.slot_of[adapter_id]
            del self.id_of[slot]
            self.idle.move_to_end(slot, last=False)

    @property
    def active(self) -> int:
        return sum(1 for r in self.refs[1:] if r > 0)


class AdapterStore:
    def __init__(
        self,
        spec: BaseSpec,
        layers: dict[tuple[int, str], MultiLoraLinear],
        n_slots: int,
        host_cache_bytes: int,
        metrics: EngineMetrics,
        device: str = "cpu",
        load_workers: int = 1,
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.device = device
        self.host = HostCache(host_cache_bytes, metrics)
        self.slots = SlotTable(n_slots, layers, metrics)
        self._entries: dict[str, AdapterEntry] = {}
        self._pending: dict[str, Future[AdapterWeights]] = {}
        self._lock = threading.RLock()
        self._idle_evictions: set[str] = set()  # unloaded ids whose slot is cleared once no sequence uses it
        self._pool = ThreadPoolExecutor(max_workers=load_workers, thread_name_prefix="tally-adapter-load")
        self.on_loaded: Callable[[], None] = lambda: None  # wakes the engine loop

    # -- registry -------------------------------------------------------------------------------------------------
    def register(self, name: str, path: Path | str, *, pinned: bool = False, load_now: bool = False) -> AdapterEntry:
        """Register (or re-point) `name`. `load_now` reads and validates the weights before returning."""
        path = Path(path).expanduser().resolve()
        entry = AdapterEntry(name, path, pinned)
        try:
            check_directory(name, path)
            read_config(name, path)
            # the id (content hash) is known from registration on, so a later cold load only reads the weights
            entry.fingerprint = Fingerprint.of(path)
            entry.adapter_id = hash_adapter(path)
        except Exception as exc:
            raise _as_validation_error(name, exc) from exc
        if load_now:
            weights = self._read(entry)
            entry.adapter_id, entry.fingerprint = weights.adapter_id, weights.fingerprint
            self.host.put(weights)
            if pinned:
                self.host.pinned.add(weights.adapter_id)
        with self._lock:
            old = self._entries.get(name)
            self._entries[name] = entry
            self._pending.pop(name, None)
        if old is not None and old.adapter_id and old.adapter_id != entry.adapter_id:
            self._forget(old.adapter_id)
        return entry

    def unregister(self, name: str) -> AdapterEntry:
        with self._lock:
            entry = self._entries.pop(name, None)
            self._pending.pop(name, None)
        if entry is None:
            raise AdapterNotFoundError(f"adapter {name!r} is not loaded")
        if entry.adapter_id:
            self._forget(entry.adapter_id)
        return entry

    def _forget(self, adapter_id: str) -> None:
        """Free the host copy (and mark the slot for reuse) when no other name points at the same weights."""
        with self._lock:
            if any(e.adapter_id == adapter_id for e in self._entries.values()):
                return
        self.host.drop(adapter_id)
        self._idle_evictions.add(adapter_id)

    def entries(self) -> list[AdapterEntry]:
        with self._lock:
            return sorted(self._entries.values(), key=lambda e: e.name)

    def tier(self, name: str) -> str:
        """Where `name`'s weights are now: "slot" (an active slot), "host" (the host cache) or "disk" (registered,
        read from disk on its next request)."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None or entry.adapter_id is None:
            return "disk"
        if self.slots.lookup(entry.adapter_id) is not None:
            return "slot"
        return "host" if entry.adapter_id in self.host else "disk"

    def resolve(self, name: str) -> AdapterEntry:
        """The entry for `name`, or AdapterNotFoundError: the engine never falls back to the base model."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise AdapterNotFoundError(
                f"The model {name!r} does not exist: it is neither the base model nor a served adapter (GET "
                "/v1/models lists them). An operator adds an adapter with `tally train ... publish` or `tally "
                f"adapters add {name} DIR`, or an admin with POST /v1/load_lora_adapter.",
                param="model",
                model=name,
            )
        if entry.fingerprint is not None:
            try:
                changed = Fingerprint.of(entry.path) != entry.fingerprint
            except OSError:
                changed = True
            if changed:  # files replaced in place: the id must be computed again
                with self._lock:
                    entry.adapter_id, entry.fingerprint, entry.checked = None, None, False
        self._check(entry)
        return entry

    def _check(self, entry: AdapterEntry) -> None:
        """Refuse, as the adapter's own error, files already known to be bad or whose header is unsound. A request
        that names a broken adapter is then refused when it is submitted, before it reaches the engine loop."""
        if entry.error is not None:
            if _stat(entry.path) == entry.error_stat:
                raise AdapterValidationError(entry.error, adapter=entry.name)
            entry.error, entry.error_stat, entry.checked = None, None, False  # the files changed: try them again
        if entry.checked:
            return
        try:
            check_safetensors(entry.name, entry.path / WEIGHTS_FILE)
        except Exception as exc:
            error = _as_validation_error(entry.name, exc)
            entry.error, entry.error_stat = str(error), _stat(entry.path)
            raise error from exc
        entry.checked = True

    # -- disk -> host ---------------------------------------------------------------------------------------------
    def _read(self, entry: AdapterEntry) -> AdapterWeights:
        start = time.perf_counter()
        known = (entry.adapter_id, entry.fingerprint) if entry.adapter_id and entry.fingerprint else None
        try:
            weights = load_adapter(entry.name, entry.path, self.spec, device="cpu", known=known)
        except Exception as exc:
            raise _as_validation_error(entry.name, exc) from exc
        self.metrics.load_seconds.observe(time.perf_counter() - start)
        return weights

    def host_weights(self, name: str) -> AdapterWeights | None:
        """The weights if host-resident (a hit), else start loading them in the background (a miss) and return None.

        Raises AdapterValidationError if the last background load failed; while the files stay as they were, later
        requests get the same error at once (from `resolve`) instead of reading the broken files again.
        """
        entry = self.resolve(name)
        if entry.adapter_id is not None:
            weights = self.host.get(entry.adapter_id)
            if weights is not None:
                return weights
        with self._lock:
            fut = self._pending.get(name)
            if fut is not None and fut.done():
                del self._pending[name]
                exc = fut.exception()
                if exc is not None:
                    error = _as_validation_error(name, exc if isinstance(exc, Exception) else RuntimeError(exc))
                    if self._entries.get(name) is entry:
                        entry.error, entry.error_stat = str(error), _stat(entry.path)
                    raise error
                weights = fut.result()
                if self._entries.get(name) is entry:
                    entry.adapter_id, entry.fingerprint = weights.adapter_id, weights.fingerprint
                    self.host.put(weights)
                    if entry.pinned:
                        self.host.pinned.add(weights.adapter_id)
                return weights
            if fut is None:
                self._pending[name] = self._pool.submit(self._load_task, entry)
        return None

    def _load_task(self, entry: AdapterEntry) -> AdapterWeights:
        try:
            return self._read(entry)
        finally:
            self.on_loaded()

    def prefetch(self, name: str) -> None:
        with contextlib.suppress(AdapterNotFoundError, AdapterValidationError):
            self.host_weights(name)  # errors are reported to the request itself when it is scheduled

    # -- host -> slot ---------------------------------------------------------------------------------------------
    def acquire_slot(self, weights: AdapterWeights) -> int | None:
        self.flush_evictions()
        return self.slots.acquire(weights)

    def release_slot(self, slot: int) -> None:
        self.slots.release(slot)
        self.flush_evictions()

    def flush_evictions(self) -> None:
        """Clear the slots of unloaded adapters once no sequence uses them (engine thread, between steps)."""
        for adapter_id in list(self._idle_evictions):
            slot = self.slots.lookup(adapter_id)
            if slot is None:
                self._idle_evictions.discard(adapter_id)
            elif self.slots.refs[slot] == 0:
                self.slots.evict_id(adapter_id)
                self._idle_evictions.discard(adapter_id)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
