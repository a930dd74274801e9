"""The context signal: every prompt run on the full prompt's key/value cache, packed, gives the same log-probabilities
as independent forwards, while running fewer tokens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.factory.conftest import _real_model_dir, tiny_model  # noqa: F401 - re-exported fixture

from tally.attribution import context
from tally.attribution.context import (
    context_drops,
    forward_tokens,
    masked_logprobs,
    masked_prompts,
    rag_prompt_ids,
)
from tally.models.load import load_model, load_tokenizer


@dataclass(frozen=True)
class Chunk:
    text: str
    row_hash: str
    datanet: str = "notes"
    snapshot: str = "s1"
    contribution: str = "c1"
    contributor: str = "0xabc"


CHUNKS = [
    Chunk("Ilsa Varn was born in Korvath, a harbour town in the north.", "r1"),
    Chunk("Tomas Quell is a cartographer who maps the Drennick marshes.", "r2"),
    Chunk("The glassblowers of Korvath sell their work at the winter fair.", "r3"),
]
QUESTION = "Where was Ilsa Varn born?"


def independent_tokens(model: Any, tok: Any, chunks: list[Chunk], answer: list[int]) -> torch.Tensor:
    """The answer's per-token log-probabilities from one plain full forward (the reference)."""
    prompt = rag_prompt_ids(tok, QUESTION, chunks)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    return torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1).gather(1, torch.tensor(answer)[:, None])[:, 0]


def independent(model: Any, tok: Any, chunks: list[Chunk], answer: list[int]) -> float:
    """The answer's summed log-probability from one plain full forward."""
    return float(independent_tokens(model, tok, chunks, answer).sum())


def without(chunks: list[Chunk], j: int) -> list[Chunk]:
    return [Chunk("", c.row_hash) if i == j else c for i, c in enumerate(chunks)]


@pytest.fixture(scope="module")
def tiny(tiny_model: Path) -> tuple[Any, Any]:  # noqa: F811
    return load_model(tiny_model), load_tokenizer(tiny_model)


def test_batched_drops_equal_independent_forwards(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    answer = tok("Ilsa Varn was born in Korvath [1].", add_special_tokens=False)["input_ids"]
    result = context_drops(model, tok, QUESTION, CHUNKS, answer)

    full = independent(model, tok, CHUNKS, answer)
    assert result.full_logprob == pytest.approx(full, abs=1e-4)
    assert [d.row_hash for d in result.chunks] == ["r1", "r2", "r3"]
    assert [d.index for d in result.chunks] == [0, 1, 2]
    for j, d in enumerate(result.chunks):
        alone = independent(model, tok, without(CHUNKS, j), answer)
        assert d.logprob_without == pytest.approx(alone, abs=1e-4)
        assert d.drop == pytest.approx(full - alone, abs=1e-4)
    assert result.answer_tokens == len(answer) and result.seconds > 0


LEAVE_ONE_OUT_MASKS = torch.tensor([[True] * 3, [False, True, True], [True, False, True], [True, True, False]])
# random-looking subsets, one repeated and one the full context again: repeats are scored once and copied
RANDOM_MASKS = torch.tensor(
    [[True] * 3, [False, True, False], [True, False, False], [False, False, True], [False, True, False], [True] * 3]
)


@pytest.mark.parametrize("masks", [LEAVE_ONE_OUT_MASKS, RANDOM_MASKS], ids=["leave-one-out", "random"])
@pytest.mark.parametrize("packing", [(512, 8), (48, 2)], ids=["one-forward", "padded-bins-in-several-forwards"])
def test_rows_run_on_the_full_prompts_cache_score_as_independent_forwards(
    tiny: tuple[Any, Any], masks: torch.Tensor, packing: tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tok = tiny
    monkeypatch.setattr(context, "BIN_TOKENS", packing[0])
    monkeypatch.setattr(context, "BINS_PER_PASS", packing[1])
    answer = tok("Ilsa Varn was born in Korvath [1].", add_special_tokens=False)["input_ids"]
    prompts = masked_prompts(tok, QUESTION, CHUNKS, masks)
    sizes = [len(prompts[row]) - keep + len(answer) - 1 for row, keep in context._reuse_plan(prompts)]
    assert (len(context._passes(sizes)) > 1) == (packing[0] < 100)  # small bins: padding, several forwards
    logp, _ = masked_logprobs(model, tok, QUESTION, CHUNKS, answer, masks)
    earlier, _ = masked_logprobs(model, tok, QUESTION, CHUNKS, answer, masks, reuse_prefixes=False)
    assert logp.shape == earlier.shape == (len(masks), len(answer))
    for row, keep in zip(logp, masks.tolist(), strict=True):
        chunks = [c if k else Chunk("", c.row_hash) for c, k in zip(CHUNKS, keep, strict=True)]
        assert torch.allclose(row, independent_tokens(model, tok, chunks, answer), rtol=1e-5, atol=1e-4)
    assert torch.allclose(logp, earlier, rtol=1e-5, atol=1e-4)


def test_each_row_runs_only_what_differs_from_the_full_prompt(tiny: tuple[Any, Any]) -> None:
    _, tok = tiny
    prompts = masked_prompts(tok, QUESTION, CHUNKS, LEAVE_ONE_OUT_MASKS)
    full, answer = prompts[0], 10
    # row j keeps the full prompt's tokens up to chunk j's text; these rows fit one bin, so nothing is padding
    starts = [next(i for i, (a, b) in enumerate(zip(full, p, strict=False)) if a != b) for p in prompts[1:]]
    expected = len(full) + answer - 1 + sum(len(p) - s + answer - 1 for p, s in zip(prompts[1:], starts, strict=True))
    assert forward_tokens(prompts, answer) == expected
    assert expected < forward_tokens(prompts, answer, reuse_prefixes=False)
    # a repeated prompt runs nothing; no answer, nothing at all
    assert forward_tokens([*prompts, full], answer) == expected and forward_tokens(prompts, 0) == 0


def test_the_shared_prefix_ends_where_the_first_chunk_begins(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    result = context_drops(model, tok, QUESTION, CHUNKS, tok("Korvath.", add_special_tokens=False)["input_ids"])
    prompt = rag_prompt_ids(tok, QUESTION, CHUNKS)
    shared = tok.decode(prompt[: result.shared_prefix_tokens])
    assert shared.rstrip().endswith("[1]") and "Ilsa" not in shared
    # a removed chunk keeps its number: later sources are not renumbered
    assert "[2] \n\n[3] The glassblowers" in tok.decode(rag_prompt_ids(tok, QUESTION, without(CHUNKS, 1)))


def test_no_chunks_and_empty_answers(tiny: tuple[Any, Any]) -> None:
    model, tok = tiny
    answer = tok("I do not know.", add_special_tokens=False)["input_ids"]
    alone = context_drops(model, tok, QUESTION, [], answer)
    assert alone.chunks == [] and alone.full_logprob == pytest.approx(independent(model, tok, [], answer), abs=1e-4)
    empty = context_drops(model, tok, QUESTION, CHUNKS, [])
    assert empty.full_logprob == 0.0 and [d.drop for d in empty.chunks] == [0.0, 0.0, 0.0]


def test_a_peft_model_in_training_mode_is_scored_in_eval_mode_and_left_as_found(tiny_model: Path) -> None:  # noqa: F811
    from peft import LoraConfig, get_peft_model

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(1)
    config = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.5, target_modules=["q_proj", "v_proj"], init_lora_weights=False
    )
    model = get_peft_model(load_model(tiny_model), config)
    model.train()
    answer = tok("Korvath [1].", add_special_tokens=False)["input_ids"]
    result = context_drops(model, tok, QUESTION, CHUNKS, answer)
    assert model.training
    model.eval()  # dropout off: the reference must be deterministic too
    assert result.full_logprob == pytest.approx(independent(model, tok, CHUNKS, answer), abs=1e-4)
    assert result.chunks[2].logprob_without == pytest.approx(
        independent(model, tok, without(CHUNKS, 2), answer), abs=1e-4
    )


@pytest.mark.slow
def test_the_real_model_leans_on_the_chunk_that_holds_the_answer() -> None:
    model, tok = load_model(_real_model_dir()), load_tokenizer(_real_model_dir())
    chunks = [CHUNKS[1], CHUNKS[0], CHUNKS[2]]  # the answer is in the second source
    answer = tok("Ilsa Varn was born in Korvath [2].", add_special_tokens=False)["input_ids"]
    drops = [d.drop for d in context_drops(model, tok, QUESTION, chunks, answer).chunks]
    assert max(drops) == drops[1] and drops[1] > 1.0, drops
