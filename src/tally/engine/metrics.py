"""Prometheus metrics of one engine, in their own registry (two engines in one process never collide)."""

from __future__ import annotations

import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class EngineMetrics:
    content_type = CONTENT_TYPE  # of `render()`

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.running = Gauge("tally_engine_requests_running", "Running requests per adapter", ["adapter"], registry=r)
        self.waiting = Gauge("tally_engine_requests_waiting", "Waiting requests per adapter", ["adapter"], registry=r)
        self.load_seconds = Histogram(
            "tally_engine_adapter_load_seconds",
            "Adapter load latency, disk to host cache (read, hash, validate)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )
        self.cache_lookups = Counter(
            "tally_engine_adapter_cache_lookups",
            "Host adapter cache lookups by result (hit, miss)",
            ["result"],
            registry=r,
        )
        self.evictions = Counter(
            "tally_engine_adapter_evictions", "Adapter evictions by tier (host, slot)", ["tier"], registry=r
        )
        self.prompt_tokens = Counter("tally_engine_prompt_tokens", "Prompt tokens processed", registry=r)
        self.generated_tokens = Counter("tally_engine_generation_tokens", "Tokens generated", registry=r)
        self.prefix_cached_tokens = Counter(
            "tally_engine_prefix_cached_tokens", "Prompt tokens whose keys and values came from the prefix cache",
            registry=r,
        )  # fmt: skip
        self.requests = Counter("tally_engine_requests", "Finished requests by reason", ["finish_reason"], registry=r)
        self.tokens_per_second = Gauge(
            "tally_engine_tokens_per_second", "Generated tokens per second over the last 10 s", registry=r
        )
        self.slots_active = Gauge("tally_engine_adapter_slots_active", "Adapter slots in use", registry=r)
        self.host_cache_bytes = Gauge("tally_engine_adapter_host_cache_bytes", "Bytes in the host cache", registry=r)
        self._recent: deque[tuple[float, int]] = deque()
        self._known: set[str] = set()
        self._last_running: dict[str, int] = {}
        self._last_waiting: dict[str, int] = {}

    def record_step(self, new_tokens: int) -> None:
        now = time.monotonic()
        self._recent.append((now, new_tokens))
        while self._recent and now - self._recent[0][0] > 10.0:
            self._recent.popleft()
        span = max(now - self._recent[0][0], 1e-3) if len(self._recent) > 1 else 1.0
        self.tokens_per_second.set(sum(n for _, n in self._recent) / span)
        self.generated_tokens.inc(new_tokens)

    def set_queue(self, running: dict[str, int], waiting: dict[str, int]) -> None:
        """Per-adapter gauges; only the changed ones are touched (this runs every step, with up to thousands of
        adapters). Adapters that left both queues read 0 (kept, so a scrape sees the drop)."""
        for name in self._last_running.keys() | running.keys():
            if self._last_running.get(name, 0) != running.get(name, 0) or name not in self._known:
                self.running.labels(adapter=name).set(running.get(name, 0))
        for name in self._last_waiting.keys() | waiting.keys():
            if self._last_waiting.get(name, 0) != waiting.get(name, 0) or name not in self._known:
                self.waiting.labels(adapter=name).set(waiting.get(name, 0))
        self._known |= running.keys() | waiting.keys()
        self._last_running, self._last_waiting = running, waiting

    def render(self) -> bytes:
        return generate_latest(self.registry)
