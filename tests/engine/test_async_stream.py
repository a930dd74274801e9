"""The engine's asyncio stream: events that queue up while the loop is busy arrive merged, and nothing is lost."""

from __future__ import annotations

import asyncio

from tests.engine.conftest import TinySetup, make_engine

from tally.engine.sampling import SamplingParams


def test_events_queued_while_the_loop_waits_arrive_merged_and_whole(tiny: TinySetup) -> None:
    engine = make_engine(tiny)
    prompt = tiny.tokenizer.encode("hello world")
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    expected = engine.generate(prompt, params, model="ad1-r8")  # no engine thread: generate steps it itself

    async def consume() -> list:
        events = engine.stream(prompt, params, model="ad1-r8")
        first = asyncio.ensure_future(events.__anext__())
        await asyncio.sleep(0)  # the request is submitted; the loop waits for its first event
        await asyncio.to_thread(engine.run_until_idle)  # every token is produced before the loop reads on
        return [await first] + [event async for event in events]

    events = asyncio.run(consume())
    assert len(events) <= 2  # twelve tokens, read as at most two events
    assert [t for e in events for t in e.token_ids] == expected.token_ids
    assert "".join(e.text for e in events) == expected.text
    assert events[-1].finish_reason == "length" and events[-1].usage.completion_tokens == 12
    assert all(e.finish_reason is None for e in events[:-1])
    engine.stop()
