"""The context signal for RAG answers: how much less likely the answer becomes without each retrieved chunk.

Why leave-one-out: a chunk the answer leans on is one whose absence makes the answer's tokens less probable, which
measures use rather than topical overlap. The score of chunk j is `drop = log p(answer | all chunks) -
log p(answer | all chunks but j)`, in nats; positive means the chunk helped.

A removed chunk keeps its number with empty text ("[j] "), rather than being dropped from the list. Dropping it
would renumber every later source, so an answer that cites [3] would point at different text and the drop would
mix the loss of the chunk with broken citations; an empty source changes only chunk j's text.

Cost: the k + 1 prompts (the full one and one per removed chunk) share their tokens up to the first chunk's text.
That prefix runs once with a key/value cache; the cache is repeated over a batch and every prompt's remaining
tokens plus the answer run in one forward on top of it. Suffixes are right-padded: with causal attention, padding
after a token cannot change it, so the answer's log-probabilities equal those of independent full forwards.
Prompts are built as serving builds them (build_rag_messages, then the chat template with a generation prompt).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tally.rag.answers import Source, build_rag_messages

LEAVE_ONE_OUT = "leave_one_out"
SURROGATE = "surrogate"


@dataclass(frozen=True)
class ChunkDrop:
    index: int  # position of the chunk in the retrieved list (0-based; its source number is index + 1)
    row_hash: str
    logprob_without: float
    drop: float  # full_logprob - logprob_without, nats (the surrogate: the chunk's fitted weight)


@dataclass(frozen=True)
class ContextResult:
    full_logprob: float  # sum over the answer's tokens, nats
    chunks: list[ChunkDrop]  # in retrieval order
    answer_tokens: int
    shared_prefix_tokens: int  # tokens run once and reused by every prompt
    seconds: float
    method: str = LEAVE_ONE_OUT  # or SURROGATE (many chunks: a Lasso fit on random ablations)
    masks: torch.Tensor | None = None  # [rows, chunks] bool: which chunks each scored prompt kept (row 0: all)
    token_logprobs: torch.Tensor | None = None  # [rows, answer tokens]: the answer's per-token log-probabilities


@dataclass(frozen=True)
class _Blank:
    """A chunk with its text removed: same number and metadata, nothing to read."""

    datanet: str
    snapshot: str
    contribution: str
    contributor: str
    row_hash: str
    text: str = ""


def _blank(c: Source) -> _Blank:
    return _Blank(c.datanet, c.snapshot, c.contribution, c.contributor, c.row_hash)


def rag_prompt_ids(tokenizer: Any, question: str, chunks: Sequence[Source]) -> list[int]:
    """The token ids serving continues to answer `question` from `chunks`."""
    text = tokenizer.apply_chat_template(
        build_rag_messages(question, chunks), tokenize=False, add_generation_prompt=True
    )
    return list(tokenizer(str(text), add_special_tokens=False)["input_ids"])


def _common_prefix(seqs: list[list[int]]) -> int:
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def context_drops(
    model: Any, tokenizer: Any, question: str, chunks: Sequence[Source], answer_ids: list[int]
) -> ContextResult:
    """Leave-one-out log-probability drop of `answer_ids` for each chunk (see the module docstring)."""
    start = time.perf_counter()
    k = len(chunks)
    masks = torch.ones(k + 1, k, dtype=torch.bool)
    for j in range(k):
        masks[j + 1, j] = False
    logp, shared = masked_logprobs(model, tokenizer, question, chunks, answer_ids, masks)
    totals = [float(x) for x in logp.sum(dim=1)]
    full = totals[0]
    drops = [ChunkDrop(j, c.row_hash, lp, full - lp) for j, (c, lp) in enumerate(zip(chunks, totals[1:], strict=True))]
    return ContextResult(full, drops, len(answer_ids), shared, time.perf_counter() - start, LEAVE_ONE_OUT, masks, logp)


def context_surrogate(
    model: Any,
    tokenizer: Any,
    question: str,
    chunks: Sequence[Source],
    answer_ids: list[int],
    *,
    ablations: int,
    alpha: float,
    seed: int = 0,
) -> ContextResult:
    """ContextCite's estimate for many chunks: the answer's log-probability under `ablations` random subsets of the
    chunks (each kept with p = 0.5, seeded), plus the full context, fit by a sparse linear model (Lasso). A chunk's
    `drop` is its weight: the nats the answer gains, on average over the other chunks, when this one is present."""
    start = time.perf_counter()
    k = len(chunks)
    gen = torch.Generator().manual_seed(seed)
    masks = torch.cat([torch.ones(1, k, dtype=torch.bool), torch.rand(ablations, k, generator=gen) < 0.5])
    logp, shared = masked_logprobs(model, tokenizer, question, chunks, answer_ids, masks)
    totals = logp.sum(dim=1, keepdim=True).double().numpy()
    weights, _ = lasso(masks.double().numpy(), totals, alpha)
    full = float(totals[0, 0])
    drops = [ChunkDrop(j, c.row_hash, full - float(weights[j, 0]), float(weights[j, 0])) for j, c in enumerate(chunks)]
    return ContextResult(full, drops, len(answer_ids), shared, time.perf_counter() - start, SURROGATE, masks, logp)


def lasso(
    x: np.ndarray, y: np.ndarray, alpha: float, iterations: int = 1000, tol: float = 1e-7
) -> tuple[np.ndarray, np.ndarray]:
    """L1-regularised least squares, one independent fit per column of `y`, by cyclic coordinate descent:
    minimise (1 / 2m) ||y - x w - b||^2 + alpha ||w||_1 with an unpenalised intercept b (the objective of
    scikit-learn's Lasso). x: [m, k], y: [m, t]; returns (w [k, t], b [t])."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, k = x.shape
    x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
    xc, residual = x - x_mean, y - y_mean
    norms = (xc**2).sum(axis=0) / m
    w = np.zeros((k, y.shape[1]))
    for _ in range(iterations):
        largest = 0.0
        for j in range(k):
            if norms[j] == 0.0:
                continue
            rho = xc[:, j] @ residual / m + norms[j] * w[j]
            new = np.sign(rho) * np.maximum(np.abs(rho) - alpha, 0.0) / norms[j]
            delta = new - w[j]
            if np.any(delta):
                residual -= np.outer(xc[:, j], delta)
                w[j] = new
                largest = max(largest, float(np.abs(delta).max()))
        if largest < tol:
            break
    return w, y_mean - x_mean @ w


def masked_logprobs(
    model: Any,
    tokenizer: Any,
    question: str,
    chunks: Sequence[Source],
    answer_ids: list[int],
    masks: torch.Tensor,
    batch_rows: int = 16,
) -> tuple[torch.Tensor, int]:
    """Per-token log-probabilities of `answer_ids` ([rows, answer tokens], float32 on the host) for each row of
    `masks` ([rows, chunks], True: the chunk is in the prompt, False: blanked), and the shared prefix length."""
    variants = [[c if keep else _blank(c) for c, keep in zip(chunks, row, strict=True)] for row in masks.tolist()]
    prompts = [rag_prompt_ids(tokenizer, question, v) for v in variants]
    # keep at least the last prompt token in every suffix: its output predicts the answer's first token
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    suffixes = [p[shared:] for p in prompts]
    parts = [
        _answer_logprobs(model, suffixes[i : i + batch_rows], prompts[0][:shared], answer_ids)
        for i in range(0, len(suffixes), batch_rows)
    ]
    return torch.cat(parts), shared


def _answer_logprobs(model: Any, suffixes: list[list[int]], prefix: list[int], answer: list[int]) -> torch.Tensor:
    """Per-token log-probability of `answer` after prefix + each suffix; one cached prefix pass, one batched pass."""
    if not answer:
        return torch.zeros(len(suffixes), 0)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    decoder, head = base.get_decoder(), base.get_output_embeddings()
    device = next(model.parameters()).device
    rows = [s + answer for s in suffixes]
    width = max(len(r) for r in rows)
    # Built on the host, moved once: one copy to the device, not one per row.
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows]).to(device)
    mask = torch.tensor([[1] * (len(prefix) + len(r)) + [0] * (width - len(r)) for r in rows]).to(device)
    # hidden state at position t predicts token t + 1: answer token a of row i is predicted at len(suffix_i) - 1 + a
    at = torch.tensor([[len(s) - 1 + a for a in range(len(answer))] for s in suffixes], device=device)
    targets = torch.tensor(answer, device=device).expand(len(rows), -1)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            cache = None
            if prefix:
                cache = decoder(input_ids=torch.tensor([prefix], device=device), use_cache=True).cache
                cache.batch_repeat_interleave(len(rows))
            hidden = decoder(input_ids=ids, attention_mask=mask, cache=cache, use_cache=cache is not None)
            states = hidden.last_hidden_state
            picked = states.gather(1, at[..., None].expand(-1, -1, states.shape[-1]))
            logp = torch.log_softmax(head(picked).float(), dim=-1).gather(2, targets[..., None]).squeeze(-1)
            return logp.float().cpu()
    finally:
        model.train(was_training)
