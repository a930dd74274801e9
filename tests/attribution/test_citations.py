"""Sentence citations: the surrogate's sparse fit, sentence drops from the context pass, marker checks, and the real
model citing the source a sentence copies."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from tests.attribution.test_context import CHUNKS, QUESTION, Chunk, independent, tiny  # noqa: F401 - fixture
from tests.factory.conftest import _real_model_dir, tiny_model  # noqa: F401 - fixture

from tally.attribution.citations import citations_from, sentence_drops, token_offsets
from tally.attribution.context import (
    LEAVE_ONE_OUT,
    SURROGATE,
    ContextResult,
    context_drops,
    context_surrogate,
    lasso,
    masked_logprobs,
)
from tally.models.load import load_model, load_tokenizer


def test_the_lasso_recovers_known_sparse_weights() -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((32, 20)) < 0.5).astype(float)
    truth = np.zeros(20)
    truth[[2, 11, 17]] = [3.0, 1.5, -2.0]
    y = 4.0 + x @ truth + rng.normal(0, 0.05, 32)
    w, b = lasso(x, y[:, None], alpha=0.02)
    assert set(np.flatnonzero(np.abs(w[:, 0]) > 0.3)) == {2, 11, 17}
    assert np.allclose(w[[2, 11, 17], 0], truth[[2, 11, 17]], atol=0.25)
    assert abs(b[0] - 4.0) < 0.3
    # several targets are independent fits: the second column's weights are its own
    w2, _ = lasso(x, np.stack([y, x @ (-truth)], axis=1), alpha=0.02)
    assert np.allclose(w2[:, 0], w[:, 0]) and np.allclose(w2[[2, 11, 17], 1], -truth[[2, 11, 17]], atol=0.25)
    # a large penalty keeps nothing
    assert not np.any(lasso(x, y[:, None], alpha=10.0)[0])


def test_masked_rows_score_as_independent_forwards(tiny: tuple[Any, Any]) -> None:  # noqa: F811
    model, tok = tiny
    answer = tok("Ilsa Varn was born in Korvath [1].", add_special_tokens=False)["input_ids"]
    masks = torch.tensor([[True, True, True], [False, True, False], [True, False, False]])
    logp, shared = masked_logprobs(model, tok, QUESTION, CHUNKS, answer, masks, batch_rows=2)
    assert logp.shape == (3, len(answer)) and shared > 0
    for row, keep in zip(logp, masks.tolist(), strict=True):
        chunks = [c if k else Chunk("", c.row_hash) for c, k in zip(CHUNKS, keep, strict=True)]
        assert float(row.sum()) == pytest.approx(independent(model, tok, chunks, answer), rel=1e-5, abs=1e-3)
    surrogate = context_surrogate(model, tok, QUESTION, CHUNKS, answer, ablations=8, alpha=0.01, seed=3)
    assert surrogate.method == SURROGATE and surrogate.masks is not None and surrogate.masks.shape == (9, 3)
    assert bool(surrogate.masks[0].all())
    # sums of a dozen fp32 log-probs from differently shaped batches: kernels differ between CPUs
    assert surrogate.full_logprob == pytest.approx(float(logp[0].sum()), rel=1e-5, abs=1e-3)
    again = context_surrogate(model, tok, QUESTION, CHUNKS, answer, ablations=8, alpha=0.01, seed=3)
    assert torch.equal(again.masks, surrogate.masks)  # type: ignore[arg-type] # seeded: the record is reproducible


def _planted(tok: Any, answer: str, effects: dict[tuple[int, int], float]) -> tuple[list[int], ContextResult]:
    """A leave-one-out result whose per-token log-probabilities drop by `effects[(sentence, chunk)]` nats, spread over
    the sentence's tokens, when that chunk is blanked."""
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    pre = sentence_drops(tok, ids, 3, ContextResult(0.0, [], len(ids), 0, 0.0), 0.0, guess_nats=0.0)
    logp = torch.full((4, len(ids)), -1.0)
    for (s, j), nats in effects.items():
        tokens = pre.tokens[s]
        logp[1 + j, tokens] -= nats / len(tokens)
    masks = torch.ones(4, 3, dtype=torch.bool)
    masks[1:] = ~torch.eye(3, dtype=torch.bool)
    return ids, ContextResult(float(logp[0].sum()), [], len(ids), 0, 0.0, LEAVE_ONE_OUT, masks, logp)


def test_sentences_cite_the_chunk_they_lean_on_and_wrong_markers_are_flagged(tiny: tuple[Any, Any]) -> None:  # noqa: F811
    _, tok = tiny
    answer = "Ilsa Varn was born in Korvath [1]. Tomas Quell maps marshes [2]. Nice day."
    ids, ctx = _planted(tok, answer, {(0, 1): 4.0, (1, 1): 0.2, (1, 2): 2.5, (2, 0): 0.4})
    measured = sentence_drops(tok, ids, 3, ctx, 0.0, guess_nats=0.0)
    text = measured.text
    assert text == answer
    assert [text[s.start : s.end] for s in measured.sentences] == [
        "Ilsa Varn was born in Korvath [1].", "Tomas Quell maps marshes [2].", "Nice day."
    ]  # fmt: skip
    assert measured.drops[0, 1] == pytest.approx(4.0, abs=1e-4) and measured.drops[1, 2] == pytest.approx(2.5)
    cites = citations_from(measured, text, CHUNKS, min_drop=1.0)
    got = {(c.sentence, c.source): c for c in cites}
    assert set(got) == {((0, 34), 2), ((0, 34), 1), ((35, 64), 3), ((35, 64), 2)}
    assert got[(0, 34), 2].measured and not got[(0, 34), 2].marker and got[(0, 34), 2].marker_agrees is None
    assert got[(0, 34), 2].row_hash == "r2" and got[(0, 34), 2].drop == pytest.approx(4.0, abs=1e-4)
    assert got[(0, 34), 1].marker and got[(0, 34), 1].measured is False and got[(0, 34), 1].marker_agrees is False
    assert got[(35, 64), 2].marker_agrees is False  # 0.2 nats is under the threshold
    assert got[(35, 64), 3].method == "leave_one_out" and got[(35, 64), 3].measured


def test_a_question_cites_nothing_however_much_it_copied(tiny: tuple[Any, Any]) -> None:  # noqa: F811
    _, tok = tiny
    answer = "Question: Where was Ilsa Varn born [2]? Ilsa Varn was born in Korvath."
    ids, ctx = _planted(tok, answer, {(0, 1): 9.0, (1, 0): 6.0})
    measured = sentence_drops(tok, ids, 3, ctx, 0.0, guess_nats=0.0)
    assert [s.claim for s in measured.sentences] == [False, True]
    assert measured.drops[0, 1] == pytest.approx(9.0, abs=1e-4)  # measured, but a question makes no claim
    cites = {(c.sentence[0], c.source): c for c in citations_from(measured, measured.text, CHUNKS, min_drop=4.0)}
    assert set(cites) == {(0, 2), (40, 1)}
    assert cites[0, 2].marker and cites[0, 2].measured is False and cites[0, 2].marker_agrees is False
    assert cites[40, 1].measured and cites[40, 1].drop == pytest.approx(6.0, abs=1e-4)


def test_a_sentence_holding_a_guess_no_source_explains_cites_nothing(tiny: tuple[Any, Any]) -> None:  # noqa: F811
    _, tok = tiny
    answer = "Ilsa Varn was born in Brumley [1]. Tomas Quell maps marshes. Ilsa Varn was born in Korvath."
    ids, ctx = _planted(tok, answer, {(0, 0): 6.0, (1, 1): 6.0, (2, 0): 6.0})
    assert ctx.token_logprobs is not None
    pre = sentence_drops(tok, ids, 3, ctx, 0.0, guess_nats=0.0)
    text, spans = token_offsets(tok, ids)
    word = {t: text[spans[t][0] : spans[t][1]] for s in pre.tokens for t in s}
    brumley = next(t for t in pre.tokens[0] if "B" in word[t])
    maps = next(t for t in pre.tokens[1] if "maps" in word[t])
    full_stop = pre.tokens[2][-1]
    assert word[full_stop] == "."
    # the model gave each of these under e^-3 with every source in view
    ctx.token_logprobs[:, [brumley, maps, full_stop]] -= 5.0
    ctx.token_logprobs[2, maps] -= 3.0  # blanking source 2 lowers "maps" by 3 nats: that source explains it
    measured = sentence_drops(tok, ids, 3, ctx, 0.0, guess_nats=2.3)
    assert measured.guesses == [[brumley], [], []]  # a full stop states nothing, however unexpected
    cites = {(c.sentence[0], c.source): c for c in citations_from(measured, measured.text, CHUNKS, min_drop=4.0)}
    first, second, third = (s.start for s in measured.sentences)
    # the guessed sentence leaned on source 1 (6 nats) and marked it, yet cites nothing: the marker is flagged
    assert measured.drops[0, 0] == pytest.approx(6.0, abs=1e-4)
    assert set(cites) == {(first, 1), (second, 2), (third, 1)}
    assert cites[first, 1].marker and cites[first, 1].measured is False and cites[first, 1].marker_agrees is False
    assert cites[second, 2].measured and cites[third, 1].measured
    # the rule off (0 nats): the drop alone decides
    off = sentence_drops(tok, ids, 3, ctx, 0.0, guess_nats=0.0)
    assert off.guesses == [[], [], []]
    assert citations_from(off, off.text, CHUNKS, min_drop=4.0)[0].measured


def test_marker_tokens_are_not_part_of_the_sentence_target(tiny: tuple[Any, Any]) -> None:  # noqa: F811
    _, tok = tiny
    ids = tok("Born in Korvath [2]. Yes [9].", add_special_tokens=False)["input_ids"]
    text, spans = token_offsets(tok, ids)
    measured = sentence_drops(tok, ids, 3, ContextResult(0.0, [], len(ids), 0, 0.0), 0.0, guess_nats=0.0)
    assert measured.text == "Born in Korvath [2]. Yes."  # [9] is not a source: dropped
    scored = "".join(text[spans[t][0] : spans[t][1]] for t in measured.tokens[0])
    assert "Korvath" in scored and "2" not in scored and "[" not in scored
    assert [s.markers for s in measured.sentences] == [(2,), ()]
    # without a measurement only the markers are listed, unchecked
    [marked] = citations_from(None, text, CHUNKS, min_drop=1.0)
    assert (marked.source, marked.measured, marked.marker_agrees, marked.drop) == (2, None, None, None)


def _both_methods(model: Any, tok: Any, chunks: list[Chunk], ids: list[int]) -> tuple[ContextResult, ...]:
    """The same answer measured by leave-one-out and by the surrogate."""
    return (
        context_drops(model, tok, QUESTION, chunks, ids),
        context_surrogate(model, tok, QUESTION, chunks, ids, ablations=16, alpha=0.02),
    )


@pytest.mark.slow
def test_the_real_model_cites_the_chunk_a_sentence_copies() -> None:
    model, tok = load_model(_real_model_dir()), load_tokenizer(_real_model_dir())
    chunks = [CHUNKS[1], CHUNKS[0], CHUNKS[2]]  # the birthplace is in source 2
    answer = "Ilsa Varn was born in Korvath, a harbour town in the north [1]. Tomas Quell is a cartographer."
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    for ctx in _both_methods(model, tok, chunks, ids):
        measured = sentence_drops(tok, ids, 3, ctx, 0.02, guess_nats=2.3)
        first, second = measured.drops
        # chunk 3 mentions Korvath too: about 1 nat left out, about 6 under the surrogate, which averages over
        # contexts without chunk 2 (where chunk 3 is the only source of "Korvath"); the copied chunk carries far more
        assert first.argmax() == 1 and first[1] > 4 * max(first[0], first[2], 1.0), (ctx.method, first)
        assert second.argmax() == 0 and second[0] > 5 * max(second[1], second[2], 1.0), (ctx.method, second)
        cites = citations_from(measured, measured.text, chunks, min_drop=4.0)  # the calibrated default
        sentence_one = {c.source: c for c in cites if c.sentence[0] == 0}
        assert sentence_one[2].measured and sentence_one[1].marker_agrees is False
        assert ctx.method == "surrogate" or 3 not in sentence_one
        assert measured.guesses == [[], []]  # the model would say all of it given the sources (punctuation aside)
    # a sentence that copies source 2's wording around a town no source names: it leans on source 2, but rests on no
    # source, so it cites nothing (at the configured guess level)
    made_up = "Ilsa Varn was born in Korvath. Ilsa Varn was born in Brumley, a harbour town in the south."
    ids = tok(made_up, add_special_tokens=False)["input_ids"]
    for ctx in _both_methods(model, tok, chunks, ids):
        measured = sentence_drops(tok, ids, 3, ctx, 0.02, guess_nats=2.3)
        assert measured.drops[1, 1] > 8.0, (ctx.method, measured.drops)  # the wording leans on source 2
        guessed = "".join(tok.decode([ids[t]]) for t in measured.guesses[1])
        assert "Brumley" in guessed and measured.guesses[0] == [], (ctx.method, guessed)
        assert not [c for c in citations_from(measured, measured.text, chunks, min_drop=4.0) if c.sentence[0] > 0]


def test_a_reader_who_cannot_read_a_datanet_sees_its_citations_masked() -> None:
    from tally.attribution.record import AttributionRecord, Citation, Credits

    def cite(datanet: str) -> Citation:
        return Citation(
            sentence=(0, 10), chunk=0, source=1, row_hash="r" * 64, datanet=datanet, snapshot="s" * 64,
            contribution="c" * 64, contributor="0xabc", drop=3.0, method="leave_one_out", measured=True, marker=False,
            marker_agrees=None,
        )  # fmt: skip

    record = AttributionRecord(
        id="a", mode="fast", model="m", adapter_hash=None, prompt_hash="p", answer_hash="h", prompt_tokens=1,
        completion_tokens=1, methods={}, shares=[], credits=Credits(), created_at="t",
        citations=[cite("open"), cite("secret")],
    )  # fmt: skip
    seen = record.seen_by({"open"}, lambda slug: f"label:{slug[:1]}").citations
    assert seen[0] == cite("open")
    assert (seen[1].datanet, seen[1].row_hash, seen[1].contribution, seen[1].snapshot) == ("label:s", "", "", "")
    assert seen[1].contributor == "0xabc" and seen[1].drop == 3.0
    # a record without citations serialises as records did before them (its hash unchanged)
    assert "citations" not in record.model_copy(update={"citations": []}).model_dump(mode="json")
