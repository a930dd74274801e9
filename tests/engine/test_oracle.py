"""The correctness oracle: every sequence of a mixed-adapter batch equals PEFT serving that adapter alone."""

from __future__ import annotations

import queue
import random
from typing import Any

import pytest
import torch
from tests.engine.conftest import TinySetup, assert_close, make_engine

from tally.engine import SamplingParams
from tally.engine.sequence import RequestOutput

NEW_TOKENS = 6


class PeftOracle:
    """PEFT with every adapter loaded, switched with set_adapter: single-adapter logits and generate."""

    def __init__(self, tiny: TinySetup) -> None:
        from peft import PeftModel

        self.base = tiny.base()
        names = list(tiny.adapters)
        self.model = PeftModel.from_pretrained(tiny.base(), str(tiny.adapters[names[0]]), adapter_name=names[0])
        for name in names[1:]:
            self.model.load_adapter(str(tiny.adapters[name]), adapter_name=name)
        self.model.eval()
        # generate must not stop at (or, with min_new_tokens, avoid) EOS: the engine runs with ignore_eos
        for m in (self.base, self.model.base_model.model):
            m.generation_config.eos_token_id = None
            m.generation_config.pad_token_id = 0
        self._greedy: dict[tuple[str | None, tuple[int, ...], int], list[int]] = {}

    def _model(self, adapter: str | None) -> Any:
        if adapter is None:
            return self.base
        self.model.set_adapter(adapter)
        return self.model

    @torch.no_grad()
    def logits(self, adapter: str | None, ids: list[int]) -> torch.Tensor:
        return self._model(adapter)(input_ids=torch.tensor([ids])).logits[0]

    @torch.no_grad()
    def greedy(self, adapter: str | None, prompt: list[int], n: int) -> list[int]:
        key = (adapter, tuple(prompt), n)
        if key not in self._greedy:
            out = self._model(adapter).generate(
                input_ids=torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                max_new_tokens=n,
                do_sample=False,
            )
            self._greedy[key] = out[0, len(prompt) :].tolist()
        return self._greedy[key]


@pytest.fixture(scope="module")
def oracle(tiny: TinySetup) -> PeftOracle:
    return PeftOracle(tiny)


def random_requests(tiny: TinySetup, n: int, seed: int) -> list[tuple[str | None, list[int]]]:
    rng = random.Random(seed)
    names: list[str | None] = [*tiny.adapters, None, None]
    vocab = len(tiny.tokenizer)
    chosen = [names[i % len(names)] for i in range(n)]  # every adapter and the base model appear
    rng.shuffle(chosen)
    return [(a, [rng.randrange(3, vocab) for _ in range(rng.randint(2, 40))]) for a in chosen]


def run_batch(engine: Any, requests: list[tuple[str | None, list[int]]]) -> list[tuple[list[int], list[torch.Tensor]]]:
    """Submit everything at once, step the engine in this thread, return (tokens, per-step logits) per request."""
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True, record_logits=True)
    sinks: list[queue.Queue[RequestOutput]] = []
    for adapter, prompt in requests:
        q: queue.Queue[RequestOutput] = queue.Queue()
        engine.submit(prompt, params, q.put, model=adapter or engine.model_name)
        sinks.append(q)
    engine.run_until_idle()
    results = []
    for q in sinks:
        tokens: list[int] = []
        last = None
        while not q.empty():
            last = q.get()
            tokens.extend(last.token_ids)
        assert last is not None and last.finish_reason == "length", last
        assert last.logits is not None
        results.append((tokens, last.logits))
    return results


@pytest.mark.parametrize("decode_shape", ["gather", "segments"])
def test_mixed_batches_match_peft_single_adapter(tiny: TinySetup, oracle: PeftOracle, decode_shape: str) -> None:
    requests = random_requests(tiny, 28, seed=1)
    used = {a for a, _ in requests}
    assert len(used - {None}) >= 8 and None in used
    engine = make_engine(tiny)
    # decode runs BGMV (per-token gather) or, with few adapters in the batch, SGMV segments: check both
    engine.runner.segment_decode_max_adapters = 0 if decode_shape == "gather" else 4
    results = run_batch(engine, requests)
    assert engine.store.slots.active == 0 and engine.cache.live == 0
    for (adapter, prompt), (tokens, step_logits) in zip(requests, results, strict=True):
        assert tokens == oracle.greedy(adapter, prompt, NEW_TOKENS), f"greedy mismatch for {adapter}"
        ref = oracle.logits(adapter, prompt + tokens[:-1])[len(prompt) - 1 :]
        assert_close(torch.stack(step_logits), ref, f"{adapter}")
    # the adapters really change the output (a broken LoRA path would not pass by accident)
    base_tokens = {tuple(p): t for (a, p), (t, _) in zip(requests, results, strict=True) if a is None}
    assert base_tokens
    changed = sum(
        1
        for (a, p), (t, _) in zip(requests, results, strict=True)
        if a is not None and t != oracle.greedy(None, p, NEW_TOKENS)
    )
    assert changed >= len([a for a, _ in requests if a is not None]) // 2


def test_prompt_logits_of_every_position_match_peft(tiny: TinySetup, oracle: PeftOracle) -> None:
    """The runner's packed prefill (segments of several adapters in one pass) against PEFT at every position."""
    from tally.engine.runner import StepItem

    engine = make_engine(tiny, adapter_slots=9, max_adapters_per_step=9, max_num_seqs=9)
    requests = random_requests(tiny, 9, seed=7)
    items, seqs = [], []
    for i, (adapter, prompt) in enumerate(requests):
        slot = 0
        if adapter is not None:
            weights = engine.store.host_weights(adapter)
            assert weights is not None
            slot = engine.store.acquire_slot(weights)
        items.append(StepItem(engine.cache.allocate(i), prompt, 0, slot))
        seqs.append((adapter, prompt))
    order = sorted(range(len(items)), key=lambda i: items[i].slot)
    logits, _ = engine.runner.forward([], [items[i] for i in order], all_logits=True)
    offset = 0
    for i in order:
        adapter, prompt = seqs[i]
        n = len(prompt)
        assert_close(logits[offset : offset + n], oracle.logits(adapter, prompt), f"{adapter}")
        offset += n


def test_outputs_do_not_depend_on_batch_order_or_company(tiny: TinySetup) -> None:
    requests = random_requests(tiny, 16, seed=3)
    first = run_batch(make_engine(tiny), requests)
    # reversed order, a different step budget and slot count: different batches, same answers
    engine = make_engine(tiny, max_tokens_per_step=17, adapter_slots=9, max_adapters_per_step=2, max_num_seqs=5)
    second = list(reversed(run_batch(engine, list(reversed(requests)))))
    for (t1, l1), (t2, l2) in zip(first, second, strict=True):
        assert t1 == t2
        assert_close(torch.stack(l2), torch.stack(l1), "reordered")
    # each request alone
    alone = make_engine(tiny)
    for req, (t1, l1) in list(zip(requests, first, strict=True))[:6]:
        ((t, lg),) = run_batch(alone, [req])
        assert t == t1
        assert_close(torch.stack(lg), torch.stack(l1), "alone")
