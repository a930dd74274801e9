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
    # a sound file whose tensor fits no LoRA layer: found only when the weights are read, in the background
    "sound file, wrong tensors": _header({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}) + bytes(16),
}


def _corrupt_copy(tiny: TinySetup, dst: Path, kind: str) -> Path:
    shutil.copytree(tiny.adapters["ad0-r4"], dst)
    good = (dst / WEIGHTS).read_bytes()
    (dst / WEIGHTS).write_bytes(good[: len(good) // 2] if CORRUPT[kind] is None else CORRUPT[kind])
    return dst


def _ask(engine: Any, name: str, sink: list[Any]) -> AdapterValidationError | None:
    """Submit one request; a broken adapter may be refused right here (400-class), before the engine loop."""
    try:
        engine.submit(
            [5, 6, 7], SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), sink.append, model=name
        )
    except AdapterValidationError as exc:
        return exc
    return None


@pytest.mark.parametrize("kind", CORRUPT)
def test_a_corrupt_adapter_fails_its_requests_only(tiny: TinySetup, tmp_path: Path, kind: str) -> None:
    engine = make_engine(tiny)
    engine.add_adapter("broken", _corrupt_copy(tiny, tmp_path / "broken", kind), load_now=False)
    good: list[Any] = []
    broken: list[Any] = []
    refused = [_ask(engine, name, good if name == "ad1-r8" else broken) for name in ("broken", "ad1-r8", "ad1-r8")]
    engine.run_until_idle()
    assert [o.finish_reason for o in good if o.finish_reason] == ["length", "length"]  # others keep being served
    first = refused[0]
    assert (first is None) == (kind == "sound file, wrong tensors")  # a bad header is refused at submit
    if first is None:  # only reading the weights showed the fault: the request fails with it, the loop lives on
        assert [o.finish_reason for o in broken if o.finish_reason] == ["error"]
        assert "adapter 'broken'" in broken[-1].error
    else:
        assert first.kind == "invalid" and "adapter 'broken'" in str(first)
    # from now on every request for it is refused at once, naming it, and never reaches the engine loop
    for _ in range(2):
        again = _ask(engine, "broken", broken)
        assert again is not None and again.kind == "invalid" and "adapter 'broken'" in str(again)
    assert _ask(engine, "ad1-r8", good) is None
    engine.run_until_idle()
    assert good[-1].finish_reason == "length"


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
    with pytest.raises(AdapterValidationError, match="adapter 'fixme'"):
        engine.generate([5, 6], params, model="fixme")
    time.sleep(0.01)  # a new mtime, as a real repair would leave
    shutil.copy(tiny.adapters["ad0-r4"] / WEIGHTS, path / WEIGHTS)
    assert engine.generate([5, 6], params, model="fixme").finish_reason == "length"
