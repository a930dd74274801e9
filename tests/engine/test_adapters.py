"""Adapter loading: validation errors name the adapter and the tensor; ids are content hashes; no stale weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tests.engine.conftest import PROJ, TinySetup, make_engine

from tally.engine import AdapterNotFoundError, AdapterValidationError, SamplingParams
from tally.engine.adapters import BaseSpec, hash_adapter, load_adapter

KEY_A = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"


def copy_adapter(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def edit_tensors(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    tensors = load_file(str(path / "adapter_model.safetensors"))
    fn(tensors)
    save_file(tensors, str(path / "adapter_model.safetensors"))


@pytest.fixture
def spec(tiny: TinySetup) -> BaseSpec:
    return BaseSpec.from_model(tiny.base(), PROJ, max_rank=16)


def test_loads_and_converts_to_slot_layout(tiny: TinySetup, spec: BaseSpec) -> None:
    w = load_adapter("ad1-r8", tiny.adapters["ad1-r8"], spec)
    assert w.rank == 8 and w.targets == PROJ
    a, b = w.tensors[(0, "q_proj")]
    assert a.shape == (8, 64) and b.shape == (64, 8)
    assert w.nbytes == sum(x.numel() * 4 + y.numel() * 4 for x, y in w.tensors.values())
    assert len(w.adapter_id) == 64


def test_id_is_a_content_hash(tiny: TinySetup, tmp_path: Path) -> None:
    a = copy_adapter(tiny.adapters["ad0-r4"], tmp_path / "a")
    b = copy_adapter(tiny.adapters["ad0-r4"], tmp_path / "b")
    assert hash_adapter(a) == hash_adapter(b)
    edit_tensors(b, lambda t: t[KEY_A].add_(1e-3))
    assert hash_adapter(a) != hash_adapter(b)
    cfg = json.loads((a / "adapter_config.json").read_text())
    cfg["lora_alpha"] = 99
    (a / "adapter_config.json").write_text(json.dumps(cfg))
    assert hash_adapter(a) != hash_adapter(tiny.adapters["ad0-r4"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t[KEY_A].__setitem__((0, 0), float("nan")), "contains NaN or Inf"),
        (lambda t: t.__setitem__(KEY_A, torch.zeros(4, 63)), "layers.0.q_proj.lora_A has shape (4, 63)"),
        (lambda t: t.__setitem__(KEY_A, t[KEY_A].to(torch.int32)), "dtype I32"),
        (
            lambda t: t.__setitem__("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight", t[KEY_A].clone()),
            "layer 7",
        ),
        (lambda t: t.__setitem__("base_model.model.lm_head.lora_A.weight", t[KEY_A].clone()), "lm_head"),
        (lambda t: t.pop(KEY_A.replace("lora_A", "lora_B")), "has no lora_B"),
    ],
)
def test_validation_names_adapter_and_tensor(tiny: TinySetup, spec: BaseSpec, tmp_path: Path, mutate, message) -> None:  # type: ignore[no-untyped-def]
    path = copy_adapter(tiny.adapters["ad0-r4"], tmp_path / "bad")
    edit_tensors(path, mutate)
    with pytest.raises(AdapterValidationError, match="adapter 'bad'") as info:
        load_adapter("bad", path, spec)
    assert message in str(info.value)


def test_rank_limit_and_unserved_targets(tiny: TinySetup) -> None:
    base = tiny.base()
    with pytest.raises(AdapterValidationError, match=r"rank 16, above the engine's max rank 8"):
        load_adapter("big", tiny.adapters["ad2-r16"], BaseSpec.from_model(base, PROJ, max_rank=8))
    with pytest.raises(AdapterValidationError, match="targets 'v_proj', which this engine does not serve"):
        load_adapter("qv", tiny.adapters["ad0-r4"], BaseSpec.from_model(base, ("q_proj",), max_rank=16))


def test_config_errors_and_no_pickle(tiny: TinySetup, spec: BaseSpec, tmp_path: Path) -> None:
    path = copy_adapter(tiny.adapters["ad0-r4"], tmp_path / "dora")
    cfg = json.loads((path / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AdapterValidationError, match="use_dora=True is not supported"):
        load_adapter("dora", path, spec)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    shutil.copy(tiny.adapters["ad0-r4"] / "adapter_config.json", pickled)
    (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(AdapterValidationError, match="never unpickled"):
        load_adapter("pickled", pickled, spec)
    with pytest.raises(AdapterValidationError, match="is not a directory"):
        load_adapter("missing", tmp_path / "nope", spec)


def test_engine_rejects_bad_adapter_at_load_and_unknown_names(tiny: TinySetup, tmp_path: Path) -> None:
    engine = make_engine(tiny)
    path = copy_adapter(tiny.adapters["ad0-r4"], tmp_path / "nan")
    edit_tensors(path, lambda t: t[KEY_A].fill_(float("inf")))
    with pytest.raises(AdapterValidationError, match="adapter 'nan'"):
        engine.add_adapter("nan", path)
    with pytest.raises(AdapterNotFoundError, match="'no-such-adapter' does not exist"):
        engine.submit([5, 6], SamplingParams(), lambda _: None, model="no-such-adapter")
    engine.remove_adapter("ad0-r4")
    with pytest.raises(AdapterNotFoundError):
        engine.check_model("ad0-r4")


def test_reloading_a_name_with_new_weights_never_serves_stale_results(tiny: TinySetup, tmp_path: Path) -> None:
    engine = make_engine(tiny)
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True)
    prompt = [7, 8, 9, 10]
    path = copy_adapter(tiny.adapters["ad1-r8"], tmp_path / "v")
    engine.add_adapter("mine", path)
    first = engine.generate(prompt, params, model="mine").token_ids
    assert first == engine.generate(prompt, params, model="ad1-r8").token_ids
    old_id = engine.store.resolve("mine").adapter_id
    # same name, other weights (files replaced, then re-registered like /v1/load_lora_adapter would)
    shutil.rmtree(path)
    copy_adapter(tiny.adapters["ad5-r16"], path)
    engine.add_adapter("mine", path)
    assert engine.store.resolve("mine").adapter_id != old_id
    assert (
        engine.generate(prompt, params, model="mine").token_ids
        == engine.generate(prompt, params, model="ad5-r16").token_ids
    )
    # files replaced in place without re-registering: the stat fingerprint changes, the id is computed again
    shutil.rmtree(path)
    copy_adapter(tiny.adapters["ad1-r8"], path)
    assert engine.generate(prompt, params, model="mine").token_ids == first
