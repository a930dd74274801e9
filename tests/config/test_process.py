"""The process settings a server applies at start: GIL switch interval and glibc's malloc thresholds."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest

from tally.config import ServerSettings
from tally.config.process import apply_server_process_settings

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Run in a fresh interpreter: the thresholds are process-wide, and what a heap already holds decides where a block
# lands. Each mmap check runs twice: glibc's adaptive threshold would rise to the size of the first block freed and
# serve the second from the heap, so pages of its own both times show the threshold is fixed.
CHECKS = textwrap.dedent("""
    import ctypes
    from tally.config import ServerSettings
    from tally.config.process import tune_malloc

    class MallInfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]

    def mmapped_by(size):
        before = libc.mallinfo2().hblks
        block = libc.malloc(size)
        try:
            return libc.mallinfo2().hblks > before
        finally:
            libc.free(block)

    def kept_after_freeing(blocks, size):
        held = [libc.malloc(size) for _ in range(blocks)]
        for block in reversed(held):
            libc.free(block)
        return libc.mallinfo2().keepcost  # free bytes at the top of the heap, not handed back

    step = 512 << 10  # an MLP activation of a 64-sequence decode step is about 393 KB
    assert tune_malloc(128 << 10, 0) == []
    assert mmapped_by(step) and mmapped_by(step), "above 128 KiB: pages of its own"
    defaults = ServerSettings()
    assert tune_malloc(defaults.malloc_mmap_threshold, defaults.malloc_trim_threshold) == []
    assert not mmapped_by(step), "a step's tensor now comes from the heap"
    assert kept_after_freeing(8, step) >= 4 * step, "freed step tensors stay at hand"
    big = defaults.malloc_trim_threshold * 2
    assert mmapped_by(big) and mmapped_by(big), "an index's arrays still get pages, returned when freed"
    print("ok")
""")


@pytest.mark.skipif(not GLIBC or not hasattr(ctypes.CDLL(None), "mallinfo2"), reason="the thresholds are glibc's")
def test_malloc_thresholds_reach_glibc() -> None:
    done = subprocess.run([sys.executable, "-c", CHECKS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_without_an_mmap_threshold_glibc_keeps_its_own_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    from tally.config import process

    calls: list[tuple[int, int]] = []
    fake = SimpleNamespace(CDLL=lambda _: SimpleNamespace(mallopt=_recorder(calls)), c_int=ctypes.c_int)
    monkeypatch.setattr(process, "ctypes", fake)
    assert process.tune_malloc(0, 16 << 20) == [] and calls == []  # a trim threshold alone would turn it off
    if GLIBC:
        process.tune_malloc(1 << 20, 0)
        assert calls == [(process.M_MMAP_THRESHOLD, 1 << 20)]


def _recorder(calls: list[tuple[int, int]]) -> object:
    def mallopt(option: int, value: int) -> int:  # takes argtypes/restype like ctypes' function
        calls.append((option, value))
        return 1

    return mallopt


def test_a_server_process_takes_its_settings() -> None:
    before = sys.getswitchinterval()
    try:
        settings = ServerSettings(gil_switch_interval_ms=0.25, malloc_mmap_threshold=0)  # malloc left alone here
        assert apply_server_process_settings(settings) == []
        assert sys.getswitchinterval() == pytest.approx(0.00025)
    finally:
        sys.setswitchinterval(before)
