"""Prefix caching: a prompt that shares whole blocks with an earlier one reuses their keys and values, and decodes
exactly as if it had computed them; never across adapters."""

from __future__ import annotations

from typing import Any

import torch
from tests.engine.conftest import TinySetup, assert_close, make_engine

from tally.engine.prefix_cache import BLOCK, PrefixCache
from tally.engine.sampling import SamplingParams

SHARED = [(7 * i + 3) % 300 + 5 for i in range(2 * BLOCK + 5)]  # 37 tokens: two whole blocks and some
PARAMS = SamplingParams(max_tokens=5, temperature=0.0, record_logits=True)


def _cached(engine: Any) -> float:
    return engine.metrics.prefix_cached_tokens._value.get()


def _same(got: Any, ref: Any, what: str) -> None:
    assert got.token_ids == ref.token_ids, what
    for step, (a, b) in enumerate(zip(got.logits, ref.logits, strict=True)):
        assert_close(a, b, f"{what}, step {step}")


def test_a_shared_prefix_is_reused_and_answers_stay_the_same(tiny: TinySetup) -> None:
    cached = make_engine(tiny, prefix_cache_bytes=1 << 22)
    plain = make_engine(tiny)
    second = [*SHARED, 11, 12, 13]
    for prompt in (SHARED, second, second):
        _same(cached.generate(prompt, PARAMS), plain.generate(prompt, PARAMS), f"prompt of {len(prompt)}")
    # the first prompt computed everything; the next two reused its two whole blocks (then the second's own 32)
    assert _cached(cached) == 2 * 2 * BLOCK
    assert _cached(plain) == 0
    for engine in (cached, plain):
        engine.stop()


def test_a_prefix_computed_under_one_adapter_is_not_used_under_another(tiny: TinySetup) -> None:
    cached = make_engine(tiny, prefix_cache_bytes=1 << 22)
    plain = make_engine(tiny)
    names = sorted(tiny.adapters)
    cached.generate(SHARED, PARAMS, model=names[1])
    for model in (None, names[2]):
        _same(cached.generate(SHARED, PARAMS, model=model), plain.generate(SHARED, PARAMS, model=model), str(model))
    assert _cached(cached) == 0
    _same(cached.generate(SHARED, PARAMS, model=names[1]), plain.generate(SHARED, PARAMS, model=names[1]), "again")
    assert _cached(cached) == 2 * BLOCK
    for engine in (cached, plain):
        engine.stop()


def test_batched_prompts_with_a_shared_prefix(tiny: TinySetup) -> None:
    cached = make_engine(tiny, prefix_cache_bytes=1 << 22)
    plain = make_engine(tiny)
    cached.generate(SHARED, PARAMS)
    prompts = [[*SHARED, 20 + i] for i in range(4)]
    outs: list[list] = [[] for _ in prompts]
    for i, prompt in enumerate(prompts):
        cached.submit(prompt, PARAMS, outs[i].append)
    cached.run_until_idle()
    for i, prompt in enumerate(prompts):
        _same(cached.collect(iter(outs[i])), plain.generate(prompt, PARAMS), f"prompt {i}")
    assert _cached(cached) == 4 * 2 * BLOCK
    for engine in (cached, plain):
        engine.stop()


def test_the_cache_stays_within_its_bytes_and_evicts_the_oldest(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    layers, kv_heads, head_dim = len(engine.cache.k), engine.cache.k[0].shape[1], engine.cache.k[0].shape[3]
    per_prefix = 2 * layers * kv_heads * (2 * BLOCK) * head_dim * 4  # one prompt's two whole blocks
    cache = PrefixCache(engine.cache, capacity_bytes=2 * per_prefix)
    row = engine.cache.allocate(0)
    prompts = [[p, *SHARED[1:]] for p in (1, 2, 3)]  # three different prefixes
    for prompt in prompts:
        for layer in range(layers):  # something recognisable in the row
            engine.cache.k[layer][row].fill_(float(prompt[0]))
            engine.cache.v[layer][row].fill_(-float(prompt[0]))
        cache.store(None, None, prompt, row)
        assert cache.nbytes <= cache.capacity_bytes
    other = engine.cache.allocate(1)
    assert cache.restore(None, None, prompts[0], other) == 0  # the oldest went first
    for prompt in prompts[1:]:
        assert cache.restore(None, None, prompt, other) == 2 * BLOCK
        assert bool((engine.cache.k[0][other, :, : 2 * BLOCK] == float(prompt[0])).all())
        assert bool((engine.cache.v[-1][other, :, : 2 * BLOCK] == -float(prompt[0])).all())
    assert cache.restore(None, None, prompts[1][: 2 * BLOCK], other) == BLOCK  # one token must be left to compute
    assert PrefixCache(engine.cache, 0).restore(None, None, prompts[1], other) == 0  # off
    torch.testing.assert_close(torch.tensor(engine.cache.lengths[other]), torch.tensor(BLOCK))
    engine.stop()


def test_a_prefix_is_reused_only_under_the_same_salt(tiny: TinySetup) -> None:
    """The answer path salts with the requester: one caller's prompt never makes another's answer faster."""
    from dataclasses import replace

    cached = make_engine(tiny, prefix_cache_bytes=1 << 22)
    plain = make_engine(tiny)
    alice, bob = replace(PARAMS, cache_salt="account:alice"), replace(PARAMS, cache_salt="account:bob")
    cached.generate(SHARED, alice)
    _same(cached.generate(SHARED, bob), plain.generate(SHARED, PARAMS), "another salt")
    assert _cached(cached) == 0
    _same(cached.generate(SHARED, alice), plain.generate(SHARED, PARAMS), "the same salt")
    assert _cached(cached) == 2 * BLOCK
    for engine in (cached, plain):
        engine.stop()
