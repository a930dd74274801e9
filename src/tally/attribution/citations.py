"""Sentence citations of a RAG answer, measured by context attribution rather than read from the model's markers.

For each sentence of the answer and each retrieved chunk: how many nats the sentence's tokens lose (given the
question, the other chunks and the answer's preceding text) when the chunk's text is blanked. The per-token
log-probabilities come from the context signal's own pass (tally.attribution.context), so the sentence drops cost
no extra forward:

- leave-one-out (few chunks): drop(s, j) = sum over the sentence's tokens of log p(full) - log p(without j);
- surrogate (many chunks, ContextCite): the sentence's log-probability under random ablations is fit by a Lasso on
  the keep/blank mask; the weight of chunk j is its drop.

A chunk is cited for a sentence when its drop is at least `attribution.citation_min_drop` nats (calibrated on
held-out questions, see docs/attribution.md) and the sentence states something a source supports:

- a question (the small model often echoes a source's "Question: ..." line) makes no claim, so it cites nothing,
  however much it copied;
- a sentence holding a guess cites nothing either: a word token (one with a letter or digit) the model gave less
  than e^-g with every source in view (g = `attribution.citation_guess_nats`) and that no ablation of the pass
  lowers by g nats, so no source accounts for it. Such a sentence may copy a source's wording ("X loves eating
  ...") around a value no source states; the drop measures the wording's reliance, not support for the value.

Marker tokens ([n]) are left out of a sentence's target: a marker would otherwise make the measurement echo what the
model claimed. The model's own markers are then checked: a marker whose source was not measured to carry its
sentence is kept, flagged `marker_agrees: false`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from tally.attribution.context import LEAVE_ONE_OUT, ContextResult, lasso
from tally.attribution.record import Citation
from tally.rag.answers import CheckedText, Sentence, Source, check_markers, split_sentences


@dataclass(frozen=True)
class SentenceDrops:
    """The measurement behind the citations: every sentence against every chunk."""

    text: str  # the answer with its markers checked (what the answer path returns)
    sentences: list[Sentence]
    tokens: list[list[int]]  # per sentence: the answer-token positions scored for it (markers excluded)
    drops: np.ndarray  # [sentences, chunks], nats
    method: str
    guesses: list[list[int]]  # per sentence: the answer-token positions it guessed, which no source explains
    words: np.ndarray  # per answer token: it shows a letter or digit (punctuation and markers are no guess)


def token_offsets(tokenizer: Any, answer_ids: Sequence[int]) -> tuple[str, list[tuple[int, int]]]:
    """The decoded answer and each token's [start, end) characters in it (decoding growing prefixes)."""
    text = str(tokenizer.decode(list(answer_ids), skip_special_tokens=True))
    spans, previous = [], 0
    for i in range(1, len(answer_ids) + 1):
        end = max(previous, min(len(str(tokenizer.decode(list(answer_ids[:i]), skip_special_tokens=True))), len(text)))
        spans.append((previous, end))
        previous = end
    return text, spans


def _assign_tokens(
    checked: CheckedText, raw_spans: list[tuple[int, int]], sentences: list[Sentence]
) -> tuple[list[list[int]], np.ndarray]:
    """Each token to the sentence holding most of its visible characters (blanks and markers count for none), and
    per token whether those characters hold a letter or digit (a word, not punctuation)."""
    text = checked.text
    in_marker = np.zeros(len(text) + 1, dtype=bool)
    for mk in checked.markers:
        in_marker[mk.start : mk.end] = True
    owner = np.full(len(text) + 1, -1)
    for s_index, s in enumerate(sentences):
        owner[s.start : s.end] = s_index
    tokens: list[list[int]] = [[] for _ in sentences]
    wordy = np.zeros(len(raw_spans), dtype=bool)
    for t, (raw_start, raw_end) in enumerate(raw_spans):
        start, end = checked.position(raw_start), checked.position(raw_end)
        counts: dict[int, int] = {}
        for c in range(start, end):
            if owner[c] >= 0 and not in_marker[c] and not text[c].isspace():
                counts[int(owner[c])] = counts.get(int(owner[c]), 0) + 1
                wordy[t] |= text[c].isalnum()
        if counts:
            tokens[max(counts, key=lambda k: counts[k])].append(t)
    return tokens, wordy


def sentence_drops(
    tokenizer: Any, answer_ids: Sequence[int], n_chunks: int, ctx: ContextResult, alpha: float, *, guess_nats: float
) -> SentenceDrops:
    """Drop of every sentence per chunk, and its guessed tokens (`guess_nats` > 0), from the context pass's per-token
    log-probabilities."""
    raw, raw_spans = token_offsets(tokenizer, answer_ids)
    checked = check_markers(raw, n_chunks)
    sentences = split_sentences(checked.text, checked.markers)
    tokens, wordy = _assign_tokens(checked, raw_spans, sentences)
    drops = np.zeros((len(sentences), n_chunks))
    if ctx.token_logprobs is not None and ctx.masks is not None and n_chunks and sentences:
        logp = ctx.token_logprobs.double().numpy()
        targets = np.stack([logp[:, idx].sum(axis=1) for idx in tokens], axis=1)  # [rows, sentences]
        if ctx.method == LEAVE_ONE_OUT:
            drops = (targets[0][None, :] - targets[1:]).T
        else:
            weights, _ = lasso(ctx.masks.double().numpy(), targets, alpha)
            drops = weights.T
    measured = SentenceDrops(checked.text, sentences, tokens, drops, ctx.method, [], wordy)
    return replace(measured, guesses=find_guesses(measured, ctx, guess_nats))


def find_guesses(measured: SentenceDrops, ctx: ContextResult, guess_nats: float) -> list[list[int]]:
    """Per sentence, its word tokens the model gave under e^-guess_nats with every chunk kept that no other scored
    prompt lowers by guess_nats (none when guess_nats is 0 or nothing was scored)."""
    none: list[list[int]] = [[] for _ in measured.sentences]
    if guess_nats <= 0 or ctx.token_logprobs is None or len(ctx.token_logprobs) < 2:
        return none
    logp = ctx.token_logprobs.double().numpy()
    # row 0 keeps every chunk; the largest loss over the other rows is what the best-placed source explains
    explained = (logp[0][None, :] - logp[1:]).max(axis=0)
    # punctuation is form, not a claim: a full stop the model did not expect states nothing
    guessed = (logp[0] < -guess_nats) & (explained < guess_nats) & measured.words
    return [[t for t in idx if guessed[t]] for idx in measured.tokens]


def citations_from(
    measured: SentenceDrops | None, text: str, chunks: Sequence[Source], min_drop: float
) -> list[Citation]:
    """Citations: every (sentence, chunk) the measurement supports or the model marked, sentence by sentence.
    Without a measurement (attribution off) only the model's markers are listed, unchecked."""
    if measured is None:
        checked = check_markers(text, len(chunks))
        sentences = split_sentences(checked.text, checked.markers)
    else:
        sentences = measured.sentences
    guessed = [bool(g) for g in measured.guesses] if measured is not None else [False] * len(sentences)
    out = []
    for s_index, sentence in enumerate(sentences):
        for j, chunk in enumerate(chunks):
            marker = j + 1 in sentence.markers
            drop = None if measured is None else float(measured.drops[s_index, j])
            supported = None if drop is None else drop >= min_drop and sentence.claim and not guessed[s_index]
            if not (marker or supported):
                continue
            out.append(
                Citation(
                    sentence=(sentence.start, sentence.end), chunk=j, source=j + 1, row_hash=chunk.row_hash,
                    datanet=chunk.datanet, snapshot=chunk.snapshot, contribution=chunk.contribution,
                    contributor=chunk.contributor, drop=None if drop is None else round(drop, 6),
                    method=None if measured is None else measured.method, measured=supported, marker=marker,
                    marker_agrees=(supported if marker else None),
                )
            )  # fmt: skip
    return out
