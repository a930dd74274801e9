"""Int8 base weights: the kernel against fp32 GEMM over the same (dequantised) weights, and an engine whose answers
do not depend on what they were batched with."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tests.engine.conftest import TinySetup, assert_close, make_engine

from tally.engine.quant import BLOCK, KernelUnavailable, Q8Kernel, Q8Linear, dequantize, quantize
from tally.engine.sampling import SamplingParams


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Q8Kernel:
    try:
        return Q8Kernel.load(tmp_path_factory.mktemp("kernels"))
    except KernelUnavailable as exc:  # a CPU without AVX2/FMA: nothing to test
        pytest.skip(str(exc))


def test_quantize_error_is_half_a_step_per_block() -> None:
    torch.manual_seed(0)
    w = torch.randn(48, 4 * BLOCK) * torch.logspace(-3, 1, 4 * BLOCK)  # blocks of very different magnitudes
    q, scale = quantize(w)
    assert q.dtype == torch.int8 and scale.shape == (48, 4)
    step = scale.repeat_interleave(BLOCK, dim=1)
    assert bool(((dequantize(q, scale) - w).abs() <= step / 2 + 1e-7).all())


@pytest.mark.parametrize("tokens", [1, 3, 8, 9, 16, 33])
def test_kernel_equals_fp32_gemm_over_dequantised_weights(kernel: Q8Kernel, tokens: int) -> None:
    torch.manual_seed(tokens)
    q, scale = quantize(torch.randn(200, 6 * BLOCK))
    x = torch.randn(tokens, 6 * BLOCK)
    assert_close(kernel(x, q, scale), F.linear(x, dequantize(q, scale)), f"{tokens} tokens")


@pytest.mark.parametrize("tokens", [1, 5])
def test_many_weights_in_one_call_equal_one_call_each(kernel: Q8Kernel, tokens: int) -> None:
    torch.manual_seed(tokens)
    weights = [quantize(torch.randn(rows, 4 * BLOCK)) for rows in (96, 32, 32)]  # a layer's q, k, v shapes
    x = torch.randn(tokens, 4 * BLOCK)
    for got, (q, scale) in zip(kernel.many(x, weights), weights, strict=True):
        assert torch.equal(got, kernel(x, q, scale))


def test_q8_linear_switches_to_gemm_above_max_tokens(kernel: Q8Kernel) -> None:
    torch.manual_seed(1)
    base = torch.nn.Linear(2 * BLOCK, 24, bias=True)
    layer = Q8Linear(base, kernel, max_tokens=4)
    for shape in [(1, 2 * BLOCK), (2, 2, 2 * BLOCK), (5, 2 * BLOCK), (3, 7, 2 * BLOCK)]:
        x = torch.randn(*shape)
        assert_close(layer(x), F.linear(x, layer.weight, base.bias), f"input {shape}")


def test_int8_engine_answers_alike_alone_and_batched(tiny: TinySetup, kernel: Q8Kernel) -> None:
    """Alone, a decode step (one token) goes through the kernel; batched, four decode tokens go through fp32 GEMM:
    the same products, so a sequence's logits match whether it ran alone or in a mixed batch."""
    engine = make_engine(tiny, weights="int8", int8_max_tokens=2, kernel_dir=kernel.library.parent)
    names = [None, *sorted(tiny.adapters)[:3]]
    prompts = [tiny.tokenizer.encode(t) for t in ("the quick brown fox", "hello world", "what is the capital", "ok")]
    params = SamplingParams(max_tokens=6, temperature=0.0, record_logits=True)
    alone = [engine.generate(p, params, model=m) for p, m in zip(prompts, names, strict=True)]
    outs: list[list] = [[] for _ in prompts]
    for i, (p, m) in enumerate(zip(prompts, names, strict=True)):
        engine.submit(p, params, outs[i].append, model=m)
    engine.run_until_idle()
    for i, events in enumerate(outs):
        batched = engine.collect(iter(events))
        assert batched.token_ids == alone[i].token_ids
        assert batched.logits is not None and alone[i].logits is not None
        for step, (a, b) in enumerate(zip(batched.logits, alone[i].logits, strict=True)):
            assert_close(a, b, f"sequence {i} step {step}")
    engine.stop()


def test_int8_engine_quantises_projections_but_not_the_embedding(tiny: TinySetup, kernel: Q8Kernel) -> None:
    reference = tiny.base()
    engine = make_engine(tiny, weights="int8", kernel_dir=kernel.library.parent)
    model = engine.model
    assert torch.equal(model.model.embed_tokens.weight, reference.model.embed_tokens.weight)
    assert isinstance(model.lm_head, Q8Linear)
    q_proj = model.model.layers[0].self_attn.q_proj.base  # under the multi-LoRA wrapper
    assert isinstance(q_proj, Q8Linear)
    original = reference.model.layers[0].self_attn.q_proj.weight
    assert not torch.equal(q_proj.weight, original)
    assert float((q_proj.weight - original.detach()).abs().max()) <= float(q_proj.scale.max()) / 2 + 1e-6
    down = model.model.layers[0].mlp.down_proj.base  # input width 112: not a multiple of the block, stays fp32
    assert not isinstance(down, Q8Linear)
    engine.stop()


def test_kernel_without_a_compiler_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with pytest.raises(KernelUnavailable, match="engine.weights = fp32"):
        Q8Kernel.load(tmp_path / "kernels")
    assert not list((tmp_path / "kernels").glob("*.so"))


def test_auto_weights_are_int8_where_the_kernel_builds(tiny: TinySetup, kernel: Q8Kernel) -> None:
    engine = make_engine(tiny, weights="auto", kernel_dir=kernel.library.parent)
    assert engine.weights == "int8"
    assert isinstance(engine.model.lm_head, Q8Linear)
    engine.stop()


def test_auto_weights_fall_back_to_fp32_and_say_why(
    tiny: TinySetup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    with caplog.at_level("WARNING", logger="tally.engine.engine"):
        engine = make_engine(tiny, weights="auto", kernel_dir=tmp_path / "kernels", native_decode=False)
    assert engine.weights == "fp32"
    assert not isinstance(engine.model.lm_head, Q8Linear)
    assert "engine.weights = auto: fp32" in caplog.text
    engine.stop()
    # asked for by name, int8 refuses to start rather than serve something else
    with pytest.raises(KernelUnavailable, match="engine.weights = fp32"):
        make_engine(tiny, weights="int8", kernel_dir=tmp_path / "kernels", native_decode=False)


def test_auto_weights_fall_back_when_a_cached_kernel_does_not_load(
    tiny: TinySetup, kernel: Q8Kernel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # another machine's build in a shared kernel cache, say: the same name, bytes that do not load here
    (tmp_path / kernel.library.name).write_bytes(b"not a shared library")
    with caplog.at_level("WARNING", logger="tally.engine.engine"):
        engine = make_engine(tiny, weights="auto", kernel_dir=tmp_path, native_decode=False)
    assert engine.weights == "fp32" and "loading" in caplog.text and "failed" in caplog.text
    engine.stop()
    with pytest.raises(KernelUnavailable, match="engine.weights = fp32"):
        Q8Kernel.load(tmp_path)


def test_auto_weights_keep_a_model_loaded_in_another_dtype(tiny: TinySetup, kernel: Q8Kernel) -> None:
    from tally.engine import Engine, EngineConfig
    from tally.engine.errors import RequestValidationError

    config = EngineConfig(max_num_seqs=2, max_model_len=64, device="cpu", kernel_dir=kernel.library.parent,
                          weights="auto")  # fmt: skip
    auto = Engine(tiny.base().to(torch.bfloat16), tiny.tokenizer, "tiny-bf16", config)
    assert auto.weights == "bfloat16" and not isinstance(auto.model.lm_head, Q8Linear)
    auto.stop()
    int8 = EngineConfig(max_num_seqs=2, max_model_len=64, device="cpu", kernel_dir=kernel.library.parent,
                        weights="int8")  # fmt: skip
    with pytest.raises(RequestValidationError, match="needs a model loaded in float32, this one is bfloat16"):
        Engine(tiny.base().to(torch.bfloat16), tiny.tokenizer, "tiny-bf16", int8)


def test_unknown_weights_format_is_refused_by_name() -> None:
    from tally.engine import EngineConfig

    with pytest.raises(ValueError, match="weights must be auto, fp32 or int8, got 'int4'"):
        EngineConfig(weights="int4")
