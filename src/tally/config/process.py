"""Process-wide settings a server applies once, at start (`tally serve` and each Ray replica): the GIL switch
interval and glibc's malloc thresholds. See docs/engine.md (decode under HTTP load) and docs/reliability.md (memory
over time)."""

from __future__ import annotations

import ctypes
import platform
import sys

from tally.config.settings import ServerSettings

# from glibc's malloc.h; setting either turns glibc's adaptive thresholds off
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int, trim_threshold: int) -> list[str]:
    """Fix glibc's thresholds: allocations of `mmap_threshold` bytes or more get pages of their own (when no free
    heap block fits them), returned when freed; up to `trim_threshold` free bytes at the top of a heap are kept for
    reuse. `mmap_threshold` 0 leaves both to glibc's adaptive scheme (setting either one turns it off); `trim_threshold`
    0 leaves glibc's default trim. Returns what could not be set (nothing off glibc, where there is nothing to set)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc" or mmap_threshold <= 0:
        return []
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    failed = []
    for name, option, value in (
        ("mmap threshold", M_MMAP_THRESHOLD, mmap_threshold),
        ("trim threshold", M_TRIM_THRESHOLD, trim_threshold),
    ):
        if value > 0 and not mallopt(option, value):
            failed.append(f"could not set malloc's {name} to {value} bytes")
    return failed


def apply_server_process_settings(server: ServerSettings) -> list[str]:
    """What a serving process sets before it starts its engine; returns warnings for the log."""
    # the engine thread gives the GIL up for every native call and needs it back after: with the default 5 ms
    # interval it can wait that long behind the event loop at each of them
    sys.setswitchinterval(server.gil_switch_interval_ms / 1000)
    return tune_malloc(server.malloc_mmap_threshold, server.malloc_trim_threshold)
