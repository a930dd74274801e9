"""The process settings a server applies at start: GIL switch interval and glibc's malloc thresholds."""

from __future__ import annotations

import ctypes
import platform
import sys

import pytest

from tally.config import ServerSettings
from tally.config.process import apply_server_process_settings, tune_malloc

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
    )]  # fmt: skip


def _mmapped_by(size: int) -> bool:
    """Whether glibc gives a block of `size` bytes pages of its own (its count of mmapped blocks goes up)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    try:
        return bool(libc.mallinfo2().hblks > before)
    finally:
        libc.free(ctypes.c_void_p(block))


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="the thresholds are glibc's")
def test_malloc_thresholds_reach_glibc() -> None:
    defaults = ServerSettings()
    try:
        # each check runs twice: glibc's adaptive threshold would rise to the size of the first block freed and
        # serve the second from the heap, so pages of its own both times show the threshold is fixed
        step_tensor = 512 << 10  # an MLP activation of a 64-sequence decode step is about 393 KB
        assert tune_malloc(128 << 10, 0) == []
        assert _mmapped_by(step_tensor) and _mmapped_by(step_tensor)  # above 128 KiB: pages of its own
        assert tune_malloc(defaults.malloc_mmap_threshold, defaults.malloc_trim_threshold) == []
        assert not _mmapped_by(step_tensor)  # now from the heap
        big = defaults.malloc_mmap_threshold * 2
        assert _mmapped_by(big) and _mmapped_by(big)  # an index's arrays still get pages, returned when freed
    finally:
        tune_malloc(defaults.malloc_mmap_threshold, defaults.malloc_trim_threshold)


def test_a_server_process_takes_its_settings() -> None:
    before = sys.getswitchinterval()
    try:
        assert apply_server_process_settings(ServerSettings(gil_switch_interval_ms=0.25)) == []
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(before)
