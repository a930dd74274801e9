"""The tiers: host cache bounded in bytes (LRU, pinning), slots that are never taken from running sequences,
background loads and prefetch, unload freeing memory, and the metrics that count all of it."""

from __future__ import annotations

import time

from tests.engine.conftest import TinySetup, make_engine

from tally.engine import SamplingParams
from tally.engine.metrics import EngineMetrics
from tally.engine.store import HostCache


def _weights(tiny: TinySetup, engine, name: str):  # type: ignore[no-untyped-def]
    w = engine.store.host_weights(name)
    deadline = time.monotonic() + 10
    while w is None:
        assert time.monotonic() < deadline
        time.sleep(0.005)
        w = engine.store.host_weights(name)
    return w


def test_host_cache_is_lru_bounded_in_bytes_and_keeps_pinned(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    ws = [_weights(tiny, engine, n) for n in ["ad0-r4", "ad1-r8", "ad2-r16", "ad3-r4"]]
    metrics = EngineMetrics()
    cache = HostCache(ws[0].nbytes + ws[1].nbytes + ws[3].nbytes, metrics)
    cache.put(ws[0])
    cache.pinned.add(ws[0].adapter_id)
    cache.put(ws[1])
    cache.put(ws[3])
    assert cache.get(ws[1].adapter_id) is not None  # ws[1] is now the most recent
    cache.put(ws[2])  # too big for what is left: the least recently used unpinned entry (ws[3]) goes first
    assert ws[0].adapter_id in cache and ws[2].adapter_id in cache and ws[3].adapter_id not in cache
    assert cache.nbytes <= cache.capacity or len(cache) == 2
    assert metrics.evictions.labels(tier="host")._value.get() >= 1


def test_busy_slots_are_never_evicted(tiny: TinySetup) -> None:
    engine = make_engine(tiny, adapter_slots=2, max_adapters_per_step=2, max_num_seqs=6)
    long = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)
    engine.submit([5, 6, 7], long, lambda _: None, model="ad0-r4")
    engine.submit([5, 6, 7], long, lambda _: None, model="ad1-r8")
    engine.submit([5, 6, 7], long, lambda _: None, model="ad2-r16")  # must wait: both slots are busy
    for _ in range(10):
        engine.step()
    running = {s.adapter for s in engine.scheduler.running}
    assert running == {"ad0-r4", "ad1-r8"}
    assert [s.adapter for s in engine.scheduler.waiting] == ["ad2-r16"]
    engine.run_until_idle()
    assert engine.store.slots.active == 0
    assert engine.metrics.evictions.labels(tier="slot")._value.get() >= 1


def test_cold_adapter_loads_in_background_without_stalling_others(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    entry = engine.store.resolve("ad4-r8")
    engine.store.host.drop(entry.adapter_id or "")
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    outs: list[object] = []
    engine.submit([5, 6], params, outs.append, model="ad4-r8")
    engine.submit([5, 6], params, outs.append)  # base model: runs while the adapter loads
    engine.run_until_idle()
    assert len([o for o in outs if getattr(o, "finish_reason", None) == "length"]) == 2
    text = engine.metrics.render().decode()
    assert 'tally_engine_adapter_cache_lookups_total{result="miss"} 1.0' in text
    assert "tally_engine_adapter_load_seconds_count" in text


def test_prefetch_loads_the_waiting_queues_adapters(tiny: TinySetup) -> None:
    engine = make_engine(tiny, max_num_seqs=1)
    for name in ("ad5-r16", "ad6-r8"):
        engine.store.host.drop(engine.store.resolve(name).adapter_id or "")
    long = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True)
    engine.submit([5], long, lambda _: None)  # holds the only row
    engine.submit([5], long, lambda _: None, model="ad5-r16")
    engine.submit([5], long, lambda _: None, model="ad6-r8")
    engine.step()
    deadline = time.monotonic() + 10
    while any(engine.store.resolve(n).adapter_id not in engine.store.host for n in ("ad5-r16", "ad6-r8")):
        assert time.monotonic() < deadline, "prefetch did not load the waiting adapters"
        engine.step()
        time.sleep(0.01)
        for n in ("ad5-r16", "ad6-r8"):
            engine.store.prefetch(n)  # collects finished loads into the host cache
    engine.run_until_idle()


def test_unload_frees_host_memory_and_slot(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    engine.generate([5, 6], SamplingParams(max_tokens=2), model="ad7-r4")
    adapter_id = engine.store.resolve("ad7-r4").adapter_id
    assert adapter_id in engine.store.host and engine.store.slots.lookup(adapter_id or "") is not None
    before = engine.store.host.nbytes
    engine.remove_adapter("ad7-r4")
    engine.generate([5, 6], SamplingParams(max_tokens=1))  # a step flushes the idle slot
    assert adapter_id not in engine.store.host and engine.store.host.nbytes < before
    assert engine.store.slots.lookup(adapter_id or "") is None
    assert all(max(layer.slot_rank) == 0 for layer in engine.layers.values())  # slot stacks emptied
