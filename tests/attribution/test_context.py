"""The context signal: one cached, batched pass gives the same log-probabilities as k + 1 independent forwards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.factory.conftest import _real_model_dir, tiny_model  # noqa: F401 - re-exported fixture

from tally.attribution.context import context_drops, rag_prompt_ids
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


def independent(model: Any, tok: Any, chunks: list[Chunk], answer: list[int]) -> float:
    """The answer's summed log-probability from one plain full forward (the reference)."""
    prompt = rag_prompt_ids(tok, QUESTION, chunks)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + answer])).logits[0].float()
    logp = torch.log_softmax(logits[len(prompt) - 1 : -1], dim=-1)
    return float(logp.gather(1, torch.tensor(answer)[:, None]).sum())


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
