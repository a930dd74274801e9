"""SQLite WAL checkpoints off the commit path.

SQLite's automatic checkpoint runs inside the commit that crosses its threshold: one writer in a few pays for
copying the WAL into the database file and syncing it. Here a thread with its own connection runs a PASSIVE
checkpoint (it never blocks readers or writers) soon after write transactions commit, at most once per
`interval_s`, so that work overlaps the next transactions instead. Writers keep SQLite's own automatic checkpoint
as a backstop at a higher threshold, so the WAL stays bounded if this thread falls behind.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from urllib.parse import quote

log = logging.getLogger(__name__)

BACKSTOP_PAGES = 8192  # writers' own automatic checkpoint: 128 MiB of WAL at 16 KiB pages
WAL_SIZE_LIMIT = 64 * 1024 * 1024  # a WAL file that grew past this is cut back when it restarts


class WalCheckpointer:
    def __init__(self, path: str, *, interval_s: float = 0.25) -> None:
        self.path = path
        self.interval_s = interval_s
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tally-wal-checkpoint", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A write transaction committed."""
        self._pending.set()

    def close(self) -> None:
        self._stop.set()
        self._pending.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        # mode=rw: never create a database file where none is.
        conn = sqlite3.connect(f"file:{quote(self.path)}?mode=rw", uri=True, isolation_level=None)
        try:
            conn.execute("PRAGMA busy_timeout=1000")
            while True:
                self._pending.wait()
                if self._stop.is_set():
                    return
                self._pending.clear()
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or locked: the next round, or the backstop, catches up
                    log.debug("WAL checkpoint skipped: %s", exc)
                if self._stop.wait(self.interval_s):
                    return
        finally:
            conn.close()
