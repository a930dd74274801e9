"""One malformed adapter fails only the requests for it: the engine loop keeps serving every other adapter."""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from tests.engine.conftest import TinySetup, make_engine

from tally.engine import AdapterValidationError, SamplingParams

WEIGHTS = "adapter_model.safetensors"


def _header(header: Any) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<Q", len(body)) + body


CORRUPT = {
    "garbage bytes": b"\x9f" * 3 + b"not a safetensors file at all" * 7,
    "truncated": None,  # the good file cut in half
    "header not an object": _header([1, 2, 3]),
    "negative shape": _header({"x": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}}) + bytes(16),
    "empty": b"",
}


def _corrupt_copy(tiny: TinySetup, dst: Path, kind: str) -> Path:
    shutil.copytree(tiny.adapters["ad0-r4"], dst)
    good = (dst / WEIGHTS).read_bytes()
    (dst / WEIGHTS).write_bytes(good[: len(good) // 2] if CORRUPT[kind] is None else CORRUPT[kind])
    return dst


@pytest.mark.parametrize("kind", CORRUPT)
def test_a_corrupt_adapter_fails_its_requests_only(tiny: TinySetup, tmp_path: Path, kind: str) -> None:
    engine = make_engine(tiny)
    engine.add_adapter("broken", _corrupt_copy(tiny, tmp_path / "broken", kind), load_now=False)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    outs: dict[str, list[Any]] = {"broken": [], "ad1-r8": []}
    for name in ("broken", "ad1-r8", "broken", "ad1-r8"):
        engine.submit([5, 6, 7], params, outs[name].append, model=name)
    engine.run_until_idle()
    finals = {name: [o for o in got if o.finish_reason is not None] for name, got in outs.items()}
    assert [o.finish_reason for o in finals["ad1-r8"]] == ["length", "length"]
    assert [o.finish_reason for o in finals["broken"]] == ["error", "error"]
    assert all("adapter 'broken'" in o.error for o in finals["broken"])
    # a retry gets the same clear error without reaching the engine loop, and others still run
    retry: list[Any] = []
    engine.submit([5, 6, 7], params, retry.append, model="broken")
    engine.submit([5, 6, 7], params, outs["ad1-r8"].append, model="ad1-r8")
    engine.run_until_idle()
    assert retry[-1].finish_reason == "error" and "adapter 'broken'" in retry[-1].error
    assert outs["ad1-r8"][-1].finish_reason == "length"
    assert engine.metrics.render()  # the engine is alive and reporting


def test_a_corrupt_adapter_is_a_validation_error_when_loaded_at_once(tiny: TinySetup, tmp_path: Path) -> None:
    engine = make_engine(tiny)
    with pytest.raises(AdapterValidationError, match="adapter 'broken'") as caught:
        engine.add_adapter("broken", _corrupt_copy(tiny, tmp_path / "b", "header not an object"))
    assert caught.value.kind == "invalid"


def test_a_repaired_adapter_is_read_again(tiny: TinySetup, tmp_path: Path) -> None:
    engine = make_engine(tiny)
    path = _corrupt_copy(tiny, tmp_path / "fixme", "garbage bytes")
    engine.add_adapter("fixme", path, load_now=False)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    assert engine.generate([5, 6], params, model="fixme").finish_reason == "error"
    time.sleep(0.01)  # a new mtime, as a real repair would leave
    shutil.copy(tiny.adapters["ad0-r4"] / WEIGHTS, path / WEIGHTS)
    assert engine.generate([5, 6], params, model="fixme").finish_reason == "length"
