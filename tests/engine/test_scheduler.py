"""Continuous batching: budget, adapter cap, fairness, cancellation, stop/max_tokens/seed, streaming, the thread."""

from __future__ import annotations

import queue
import time
from typing import Any

import pytest
from tests.engine.conftest import TinySetup, make_engine

from tally.engine import RequestValidationError, SamplingParams
from tally.engine.sequence import RequestOutput

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)


def record_steps(engine: Any) -> list[tuple[set[int], int, int]]:
    """Wrap the runner: per step, the distinct slots, the token count and the number of sequences."""
    steps: list[tuple[set[int], int, int]] = []
    forward = engine.runner.forward

    def spy(decode, prefill, all_logits=False, **kwargs):  # type: ignore[no-untyped-def]
        items = decode + prefill
        steps.append(({it.slot for it in items if it.slot}, sum(len(it.tokens) for it in items), len(items)))
        return forward(decode, prefill, all_logits, **kwargs)

    engine.runner.forward = spy
    return steps


def submit(engine: Any, prompt: list[int], params: SamplingParams, model: str | None) -> queue.Queue[RequestOutput]:
    q: queue.Queue[RequestOutput] = queue.Queue()
    engine.submit(prompt, params, q.put, model=model or engine.model_name)
    return q


def drain(q: queue.Queue[RequestOutput]) -> list[RequestOutput]:
    out = []
    while not q.empty():
        out.append(q.get())
    return out


def test_token_budget_and_adapter_cap_are_scheduling_rules(tiny: TinySetup) -> None:
    engine = make_engine(tiny, max_adapters_per_step=3, adapter_slots=4, max_tokens_per_step=20, max_num_seqs=6)
    steps = record_steps(engine)
    names = list(tiny.adapters)
    queues = [submit(engine, [5 + i % 7] * (3 + i % 30), GREEDY, names[i % len(names)]) for i in range(24)]
    engine.run_until_idle()
    assert all(drain(q)[-1].finish_reason == "length" for q in queues)
    assert max(len(slots) for slots, _, _ in steps) == 3  # reached, never exceeded
    assert max(tokens for _, tokens, _ in steps) <= 20
    assert max(n for _, _, n in steps) <= 6
    assert engine.cache.live == 0 and engine.store.slots.active == 0


def test_no_adapter_starves(tiny: TinySetup) -> None:
    """One slot for adapters; a popular adapter keeps arriving, a rare one must still be served soon."""
    engine = make_engine(tiny, max_adapters_per_step=1, adapter_slots=1, fairness_steps=4, max_num_seqs=4)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    popular = [submit(engine, [9, 10, 11], params, "ad1-r8") for _ in range(4)]
    rare = submit(engine, [9, 10, 11], params, "ad2-r16")
    done_at: int | None = None
    for step in range(200):
        popular.append(submit(engine, [9, 10, 11], params, "ad1-r8"))  # the flood never stops
        engine.step()
        if done_at is None and any(o.finish_reason for o in drain(rare)):
            done_at = step
            break
    assert done_at is not None and done_at < 30, done_at


def test_cancellation_frees_row_and_slot(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    long = SamplingParams(max_tokens=100, temperature=0.0, ignore_eos=True)
    q = submit(engine, [5, 6, 7], long, "ad3-r4")
    other = submit(engine, [5, 6, 7], GREEDY, "ad3-r4")
    for _ in range(3):
        engine.step()
    rid = drain(q)[0].request_id
    engine.cancel(rid)
    engine.run_until_idle()
    events = drain(q)
    assert events[-1].finish_reason == "cancelled"
    assert drain(other)[-1].finish_reason == "length"
    assert engine.cache.live == 0 and engine.store.slots.active == 0


def test_stop_strings_max_tokens_and_eos(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    prompt = engine.encode("the capital of")
    free = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True))
    assert free.finish_reason == "length" and free.completion_tokens == 12
    assert len(free.text) > 2
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 2]
    cut = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert stop not in cut.text and free.text.startswith(cut.text)
    # a stop token id ends the sequence and is not shown
    tok = free.token_ids[3]
    by_id = engine.generate(prompt, SamplingParams(max_tokens=12, temperature=0.0, stop_token_ids=(tok,)))
    assert by_id.finish_reason == "stop" and by_id.token_ids == free.token_ids[: free.token_ids.index(tok) + 1]


def test_seeded_sampling_is_reproducible_whatever_the_batch(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    params = SamplingParams(max_tokens=10, temperature=1.0, top_p=0.9, seed=1234, ignore_eos=True)
    alone = engine.generate([5, 6, 7], params, model="ad4-r8").token_ids
    qs = [
        submit(engine, [8, 9, 10, 11], SamplingParams(max_tokens=10, temperature=1.0, ignore_eos=True), None)
        for _ in range(3)
    ]
    q = submit(engine, [5, 6, 7], params, "ad4-r8")
    engine.run_until_idle()
    assert [t for o in drain(q) for t in o.token_ids] == alone
    assert all(drain(x)[-1].finish_reason == "length" for x in qs)
    others = {
        tuple(engine.generate([5, 6, 7], SamplingParams(max_tokens=10, seed=s, ignore_eos=True)).token_ids)
        for s in range(5)
    }
    assert len(others) > 1  # temperature 1 does sample


def test_streaming_events_add_up(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    events = list(
        engine.stream_sync(
            engine.encode("hello world"), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
        )
    )
    assert len(events) >= 2 and events[-1].finish_reason == "length"
    assert all(e.finish_reason is None for e in events[:-1])
    usage = events[-1].usage
    assert usage is not None and usage.completion_tokens == 10 == sum(len(e.token_ids) for e in events)
    whole = engine.generate(
        engine.encode("hello world"), SamplingParams(max_tokens=10, temperature=0.0, ignore_eos=True)
    )
    assert "".join(e.text for e in events) == whole.text


def test_request_validation(tiny: TinySetup) -> None:
    engine = make_engine(tiny, max_model_len=32)
    with pytest.raises(RequestValidationError, match="exceeds the model's context of 32 tokens") as too_long:
        engine.submit([5] * 30, SamplingParams(max_tokens=8), lambda _: None)
    assert too_long.value.param == "max_tokens" and too_long.value.values["prompt_tokens"] == 30
    vocab = int(engine.model.config.vocab_size)
    with pytest.raises(RequestValidationError, match=f"got {vocab}") as bad_token:
        engine.submit([5, vocab], SamplingParams(max_tokens=2), lambda _: None)
    assert bad_token.value.param == "prompt"
    with pytest.raises(RequestValidationError, match="empty"):
        engine.submit([], SamplingParams(), lambda _: None)
    with pytest.raises(RequestValidationError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_background_thread_serves_concurrent_requests(tiny: TinySetup) -> None:
    engine = make_engine(tiny).start()
    try:
        params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
        expected = {}
        names = [*list(tiny.adapters)[:4], None]
        qs = {n: submit(engine, [12, 13, 14], params, n) for n in names}
        deadline = time.monotonic() + 30
        for n, q in qs.items():
            events = []
            while not events or events[-1].finish_reason is None:
                events.append(q.get(timeout=max(0.1, deadline - time.monotonic())))
            expected[n] = [t for e in events for t in e.token_ids]
        for n in names:
            assert engine.generate([12, 13, 14], params, model=n or engine.model_name).token_ids == expected[n]
    finally:
        engine.stop()
