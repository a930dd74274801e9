"""The compiled decode helpers against torch's ops, and an engine whose answers do not change with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from tests.engine.conftest import PROJ, TinySetup, assert_close, make_adapter, make_engine, make_model

from tally.engine.native import DecodeOps, KernelUnavailable
from tally.engine.quant import Q8Kernel
from tally.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory) -> DecodeOps:
    try:
        return DecodeOps.load(tmp_path_factory.mktemp("kernels"))
    except KernelUnavailable as exc:  # no C compiler: the engine runs torch's ops, nothing to compare
        pytest.skip(str(exc))


def _require_int8(ops: DecodeOps) -> None:
    """Skip where the int8 kernel cannot run (a CPU without AVX2 and FMA)."""
    try:
        Q8Kernel.load(ops.library.parent)
    except KernelUnavailable as exc:
        pytest.skip(str(exc))


def _int8_model(tiny: TinySetup) -> Any:
    """A fresh tiny model whose projection widths are all multiples of 32, so every projection is quantised."""
    return make_model(len(tiny.tokenizer), tiny.tokenizer.convert_tokens_to_ids("<|im_end|>"), intermediate=128)


@pytest.mark.parametrize("rows", [1, 5])
def test_rms_norm_equals_torch(ops: DecodeOps, rows: int) -> None:
    torch.manual_seed(rows)
    x, w = torch.randn(rows, 576) * 3, torch.randn(576)
    assert_close(ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5), f"{rows} rows")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos[:, None] + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin[:, None]


@pytest.mark.parametrize("threads", [1, 2])
def test_decode_attention_equals_rotary_and_sdpa(ops: DecodeOps, threads: int) -> None:
    """Three tokens in rows 4, 0 and 2 of a cache at positions 0, 7 and 30, grouped-query (3 query heads a KV head):
    the returned output and the written cache equal torch's rotary + sdpa over each row's prefix."""
    torch.manual_seed(threads)
    kv_heads, rep, hd, capacity = 2, 3, 16, 40
    rows, positions = [4, 0, 2], [0, 7, 30]
    cache_k, cache_v = torch.randn(6, kv_heads, capacity, hd), torch.randn(6, kv_heads, capacity, hd)
    q, k, v = torch.randn(3, kv_heads * rep, hd), torch.randn(3, kv_heads, hd), torch.randn(3, kv_heads, hd)
    angles = torch.randn(3, hd // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    ref_k, ref_v = cache_k.clone(), cache_v.clone()
    q_rot, k_rot = _rotate(q, cos, sin), _rotate(k, cos, sin)
    expected = []
    for i, (row, pos) in enumerate(zip(rows, positions, strict=True)):
        ref_k[row, :, pos], ref_v[row, :, pos] = k_rot[i], v[i]
        keys = ref_k[row, :, : pos + 1].repeat_interleave(rep, 0)
        values = ref_v[row, :, : pos + 1].repeat_interleave(rep, 0)
        expected.append(F.scaled_dot_product_attention(q_rot[i][:, None], keys, values, scale=0.25)[:, 0])
    out = ops.decode_attention(
        q, k, v, cos, sin, cache_k, cache_v, torch.tensor(rows), torch.tensor(positions), 31, 0.25, threads
    )
    assert_close(out, torch.stack(expected), "attention output")
    assert_close(cache_k, ref_k, "keys written")
    assert torch.equal(cache_v, ref_v)


def test_an_unwritable_kernel_cache_says_so(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(KernelUnavailable, match="cannot write the kernel cache"):
        DecodeOps.load(blocker / "kernels")


def test_decode_attention_refuses_positions_past_the_cache(ops: DecodeOps) -> None:
    cache = torch.zeros(2, 1, 8, 4)
    q, k, v = torch.zeros(1, 2, 4), torch.zeros(1, 1, 4), torch.zeros(1, 1, 4)
    trig = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="outside the KV cache"):
        ops.decode_attention(q, k, v, trig, trig, cache, cache.clone(), torch.tensor([0]), torch.tensor([8]), 9, 1.0, 1)


@pytest.mark.parametrize("weights", ["fp32", "int8"])
def test_engine_answers_alike_with_and_without_the_helpers(tiny: TinySetup, ops: DecodeOps, weights: str) -> None:
    """Mixed adapters in one batch: the same tokens and, step by step, the same logits within tolerance, whether the
    decode steps run the compiled helpers (with int8 weights: q, k, v and gate, up in one kernel call each, the
    adapters added after) or torch's ops."""
    if weights == "int8":
        _require_int8(ops)
    names = [None, *sorted(tiny.adapters)[:3]]
    prompts = [tiny.tokenizer.encode(t) for t in ("the quick brown fox", "hello world", "what is the capital", "ok")]
    params = SamplingParams(max_tokens=6, temperature=0.0, record_logits=True)
    results = []
    for native in (True, False):
        engine = make_engine(tiny, native_decode=native, weights=weights, kernel_dir=ops.library.parent)
        assert (engine.runner.ops is not None) is native
        results.append(_batched(engine, prompts, params, names))
        engine.stop()
    _assert_same_answers(*results)


def test_int8_base_decode_steps_run_every_layer_in_one_call_with_the_same_logits(
    tiny: TinySetup, ops: DecodeOps
) -> None:
    """A model whose every projection is int8 (widths multiples of 32): base-model decode steps, alone and four
    together, go through the whole-step call, and give the logits of the layer-by-layer path on the same engine."""
    from tally.engine import Engine, EngineConfig

    _require_int8(ops)
    model = _int8_model(tiny)
    config = EngineConfig(max_num_seqs=4, max_model_len=64, weights="int8", kernel_dir=ops.library.parent, device="cpu")
    engine = Engine(model, tiny.tokenizer, "tiny-int8", config)
    decoder = engine.runner.decoder
    assert decoder is not None
    prompts = [tiny.tokenizer.encode(t) for t in ("the quick brown fox", "hello world", "what is the capital", "ok")]
    params = SamplingParams(max_tokens=5, temperature=0.0, record_logits=True, ignore_eos=True)
    runs = []
    for whole in (True, False):
        engine.runner.decoder = decoder if whole else None
        alone = [engine.generate(p, params) for p in prompts]
        runs.append(alone + _batched(engine, prompts, params, [None] * len(prompts)))
    engine.stop()
    _assert_same_answers(*runs)


def test_int8_decode_steps_with_mixed_adapters_run_in_one_call_with_the_same_logits(
    tiny: TinySetup, ops: DecodeOps, tmp_path: Path
) -> None:
    """Decode steps whose tokens carry different adapters (ranks 4, 8 and 16 on different projections, and the base
    model) go through the whole-step call with each adapter's delta added in C, and give the tokens, the logits and
    the hidden states kept for attribution of the layer-by-layer path, where torch adds the adapters."""
    from tally.engine import Engine, EngineConfig

    _require_int8(ops)
    model = _int8_model(tiny)
    specs = {"q-v-r4": (4, 8, ("q_proj", "v_proj")), "all-r8": (8, 16, PROJ), "mlp-r16": (16, 16, PROJ[4:])}
    adapters = {name: make_adapter(model, tmp_path / name, *spec, seed=7 + i) for i, (name, spec) in
                enumerate(specs.items())}  # fmt: skip
    config = EngineConfig(max_num_seqs=4, max_model_len=64, weights="int8", kernel_dir=ops.library.parent,
                          device="cpu", adapter_slots=4, max_adapters_per_step=4, max_rank=16,
                          states_from_top=1)  # fmt: skip
    engine = Engine(model, tiny.tokenizer, "tiny-int8", config)
    for name, path in adapters.items():
        engine.add_adapter(name, path)
    decoder = engine.runner.decoder
    assert decoder is not None and decoder.adapters
    calls_with_adapters = []
    run = decoder.run

    def counted(*args: Any, **kwargs: Any) -> None:
        calls_with_adapters.append(args[-1] is not None)  # the last argument: the tokens' adapter slots
        run(*args, **kwargs)

    decoder.run = counted  # type: ignore[method-assign]
    prompts = [tiny.tokenizer.encode(t) for t in ("the quick brown fox", "hello world", "what is the capital", "ok")]
    params = SamplingParams(max_tokens=5, temperature=0.0, record_logits=True, ignore_eos=True, keep_states=True)
    models: list[str | None] = [None, *specs]
    runs = []
    for whole in (True, False):
        engine.runner.decoder = decoder if whole else None
        alone = [engine.generate(p, params, model=m) for p, m in zip(prompts, models, strict=True)]
        runs.append(alone + _batched(engine, prompts, params, models))
    base = [engine.generate(p, params) for p in prompts[1:]]
    engine.stop()
    assert sum(calls_with_adapters) >= 3 * 4  # each adapter's answer alone, and the four together
    _assert_same_answers(*runs)
    for adapted, plain in zip(runs[0][1:4], base, strict=True):  # the adapters were applied in the decode steps
        assert (adapted.logits[-1] - plain.logits[-1]).abs().max() > 1e-2
    for i, (a, b) in enumerate(zip(*runs, strict=True)):  # the states entering the top layer, every token run
        assert a.states is not None and a.states.shape == (len(prompts[i % 4]) + 4, 64)
        assert_close(a.states, b.states, f"answer {i}'s states")


def test_without_a_compiler_the_engine_runs_torchs_ops(
    tiny: TinySetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="native_decode = false"):
        DecodeOps.load(tmp_path / "kernels")
    engine = make_engine(tiny, kernel_dir=tmp_path / "kernels")
    assert engine.runner.ops is None
    out = engine.generate(
        tiny.tokenizer.encode("hello"), SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    )
    assert len(out.token_ids) == 3
    engine.stop()


def _batched(engine: Any, prompts: list[list[int]], params: SamplingParams, models: list[str | None]) -> list[Any]:
    """The results of `prompts` submitted together (one per model), run until the engine is idle."""
    outs: list[list] = [[] for _ in prompts]
    for i, (p, m) in enumerate(zip(prompts, models, strict=True)):
        engine.submit(p, params, outs[i].append, model=m)
    engine.run_until_idle()
    return [engine.collect(iter(events)) for events in outs]


def _assert_same_answers(first: list[Any], second: list[Any]) -> None:
    """The same tokens, and step by step the same logits within the suite's tolerance."""
    for i, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a.token_ids == b.token_ids, f"answer {i}"
        for step, (la, lb) in enumerate(zip(a.logits, b.logits, strict=True)):
            assert_close(la, lb, f"answer {i} step {step}")


def test_a_one_call_library_that_does_not_load_leaves_decode_layer_by_layer(
    tiny: TinySetup, ops: DecodeOps, tmp_path: Path
) -> None:
    """Another machine's build in a shared kernel cache: the step's layers run one by one, the engine still answers."""
    import shutil

    from tally.engine import Engine, EngineConfig

    _require_int8(ops)
    model = _int8_model(tiny)
    config = EngineConfig(max_num_seqs=2, max_model_len=64, weights="int8", kernel_dir=ops.library.parent, device="cpu")
    assert Engine(model, tiny.tokenizer, "tiny-int8", config).runner.decoder is not None  # builds the one-call library
    for library in ops.library.parent.glob("*.so"):
        shutil.copy(library, tmp_path / library.name)
    broken = list(tmp_path.glob("q8_decode-*.so"))
    assert broken
    broken[0].write_bytes(b"not a shared library")
    config = EngineConfig(max_num_seqs=2, max_model_len=64, weights="int8", kernel_dir=tmp_path, device="cpu")
    model = _int8_model(tiny)
    engine = Engine(model, tiny.tokenizer, "tiny-int8", config)
    assert engine.weights == "int8" and engine.runner.ops is not None and engine.runner.decoder is None
    out = engine.generate(
        tiny.tokenizer.encode("hello"), SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    )
    assert len(out.token_ids) == 3
    engine.stop()
