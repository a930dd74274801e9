"""Hidden states kept for attribution: every token the engine runs, as it enters the states layer, equal to a plain
forward of the same weights; served from the prefix cache like keys and values. (With int8 weights the one-call
decode step keeps the states of the layer-by-layer path: test_native.py.)"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.engine.conftest import TinySetup, assert_close, make_engine
from tests.engine.test_prefix_cache import SHARED

from tally.engine.sampling import SamplingParams

KEEP = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, keep_states=True)


def _reference(tiny: TinySetup, adapter: str | None, tokens: list[int], layer: int) -> torch.Tensor:
    """[tokens, hidden] entering `layer`, from PEFT's forward of the whole sequence at once."""
    from peft import PeftModel

    model = tiny.base()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(tiny.adapters[adapter]))
    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    return out.hidden_states[layer][0]  # [0] is the embedding: the input of layer 0


def _run(engine: Any, prompt: list[int], model: str | None = None, params: SamplingParams = KEEP) -> Any:
    result = engine.generate(prompt, params, model=model)
    assert result.finish_reason == "length"
    return result


@pytest.mark.parametrize("adapter", [None, "ad1-r8"])
def test_states_are_those_of_a_plain_forward_of_the_prompt_and_the_answer(tiny: TinySetup, adapter: str | None) -> None:
    engine = make_engine(tiny, states_from_top=1)
    assert engine.states_layer == 2  # three layers: the states entering the top one
    prompt = tiny.tokenizer.encode("what is the capital of france?")
    result = _run(engine, prompt, adapter)
    run = prompt + result.token_ids[:-1]  # the last token sampled is never run
    assert result.states is not None and result.states.shape == (len(run), 64)
    assert_close(result.states, _reference(tiny, adapter, run, 2), "states entering layer 2")
    # asked for by the request only, and only where the engine keeps them
    assert _run(engine, prompt, adapter, SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)).states is None
    plain = make_engine(tiny)
    assert plain.states_layer is None and _run(plain, prompt, adapter).states is None
    for e in (engine, plain):
        e.stop()


def test_states_of_a_cached_prefix_come_from_the_cache(tiny: TinySetup) -> None:
    engine = make_engine(tiny, states_from_top=2, prefix_cache_bytes=1 << 22)
    cached = engine.metrics.prefix_cached_tokens
    plain = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    _run(engine, SHARED, "ad1-r8", plain)  # cached without states: no use to a request that needs them
    first = _run(engine, SHARED, "ad1-r8")
    assert cached._value.get() == 0
    again = _run(engine, [*SHARED, 11], "ad1-r8")  # two whole blocks of the prompt come from the cache
    assert cached._value.get() == 32
    run = [*SHARED, 11, *again.token_ids[:-1]]
    assert again.states is not None and again.states.shape[0] == len(run)
    assert_close(again.states, _reference(tiny, "ad1-r8", run, 1), "states after a cache hit")
    assert first.states is not None
    assert_close(again.states[:32], first.states[:32], "the cached prefix's states")
    engine.stop()


def test_states_of_requests_batched_with_chunked_prefills(tiny: TinySetup) -> None:
    """Several requests at once, with a token budget that splits prompts into chunks and mixes prefill chunks with
    other requests' decode tokens in one step: each request's states are still its own, in order."""
    engine = make_engine(tiny, states_from_top=1, max_tokens_per_step=12)
    texts = ("hello world, hello tally", "what is the capital of france?", "ok")
    models = [None, "ad1-r8", "ad5-r16", "ad1-r8"]
    prompts = [SHARED, *(tiny.tokenizer.encode(t) for t in texts)]  # 37 tokens: prefilled in four steps or more
    outs: list[list[Any]] = [[] for _ in prompts]
    for prompt, model, out in zip(prompts, models, outs, strict=True):
        engine.submit(prompt, KEEP, out.append, model=model)
    engine.run_until_idle()
    for prompt, model, out in zip(prompts, models, outs, strict=True):
        result = engine.collect(iter(out))
        run = prompt + result.token_ids[:-1]
        assert result.states is not None
        assert_close(result.states, _reference(tiny, model, run, 2), f"states of {model} batched")
    engine.stop()


def test_a_request_whose_consumer_breaks_is_ended(tiny: TinySetup) -> None:
    engine = make_engine(tiny, states_from_top=1)
    events: list[Any] = []

    def broken(out: Any) -> None:
        events.append(out)
        raise RuntimeError("the client went away")

    engine.submit(tiny.tokenizer.encode("hello world"), KEEP, broken)
    engine.run_until_idle(max_steps=50)
    assert not engine.scheduler.has_work  # ended, not decoding the same position forever
    assert events[-1].finish_reason == "cancelled"
    engine.stop()
