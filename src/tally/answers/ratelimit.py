"""Per-caller request rates: one token bucket per caller, held by the runtime (it lives across requests).

A bucket holds up to `burst` tokens and refills at `per_minute / 60` tokens a second; each request takes one. The
HTTP layer names the caller (a hash of the API key, or the client's IP without one) and answers 429 with
`Retry-After` when the bucket is empty. The table is bounded: past `max_callers` the caller seen longest ago is
dropped (it comes back with a full bucket), so a stream of made-up keys cannot grow memory without end.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        per_minute: int,
        burst: int,
        *,
        max_callers: int = 100_000,
        max_held: int = 1024,
        max_hold_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_minute, self.burst, self.max_callers = per_minute, burst, max_callers
        self._rate = per_minute / 60.0
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # caller -> (tokens, at)
        self._lock = threading.Lock()  # sync routes run on worker threads; the middleware on the event loop
        # Refused requests whose answer is held back until a token is due (the HTTP layer's tarpit), and its bounds:
        # past `max_held` at once, refusals are answered at once.
        self.held, self.max_held, self.max_hold_s = 0, max_held, max_hold_s

    @property
    def enabled(self) -> bool:
        return self._rate > 0

    def acquire(self, caller: str) -> float:
        """Take one token for `caller`: 0.0 when the request may go ahead, else the seconds until a token is due."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        with self._lock:
            tokens, at = self._buckets.pop(caller, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self._rate)
            wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self._rate
            self._buckets[caller] = (tokens - 1.0 if wait == 0.0 else tokens, now)
            if len(self._buckets) > self.max_callers:
                self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)
