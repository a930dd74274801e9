"""The server's periodic anchorer: a thread that anchors the log's head every `chain.anchor_every_entries` new
entries, or every `chain.anchor_interval_seconds` while any entry is unanchored, and once at start."""

from __future__ import annotations

import logging
import threading
import time

from tally.chain.anchor import anchor_head, latest_local_anchor
from tally.chain.client import Chain
from tally.ledger import Ledger

logger = logging.getLogger(__name__)
POLL_SECONDS = 2.0  # how often the thread looks at the log's size (a cheap read)


class Anchorer:
    def __init__(self, chain: Chain, ledger: Ledger) -> None:
        self.chain = chain
        self.ledger = ledger
        self.config = chain.config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.anchors = 0  # anchors this process sent
        self.last_error: str | None = None

    def start(self) -> Anchorer:
        self._thread = threading.Thread(target=self._run, name="tally-anchorer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def due(self, size: int, anchored: int, since_last: float) -> bool:
        if size <= anchored:
            return False
        return size - anchored >= self.config.anchor_every_entries or since_last >= self.config.anchor_interval_seconds

    def _run(self) -> None:
        last_attempt = -float("inf")  # at start, anchor whatever is unanchored
        backoff = POLL_SECONDS
        while not self._stop.wait(min(POLL_SECONDS, self.config.anchor_interval_seconds)):
            try:
                row = latest_local_anchor(self.chain, self.ledger)
                anchored = row.size if row is not None else 0
                if not self.due(self.ledger.size(), anchored, time.monotonic() - last_attempt):
                    continue
                last_attempt = time.monotonic()
                outcome = anchor_head(self.chain, self.ledger)
                if outcome.anchor is not None:
                    self.anchors += 1
                    logger.info("anchored size %d in %s", outcome.anchor.size, outcome.anchor.tx_hash)
                self.last_error, backoff = None, POLL_SECONDS
            except Exception as exc:  # the chain may be down for a while: keep serving, retry later
                self.last_error = str(exc)
                logger.warning("anchoring failed (retrying in %.0f s): %s", backoff, exc)
                if self._stop.wait(backoff):
                    return
                backoff = min(backoff * 2, 300.0)
