"""The context signal for RAG answers: how much less likely the answer becomes without each retrieved chunk.

Why leave-one-out: a chunk the answer leans on is one whose absence makes the answer's tokens less probable, which
measures use rather than topical overlap. The score of chunk j is `drop = log p(answer | all chunks) -
log p(answer | all chunks but j)`, in nats; positive means the chunk helped.

A removed chunk keeps its number with empty text ("[j] "), rather than being dropped from the list. Dropping it
would renumber every later source, so an answer that cites [3] would point at different text and the drop would
mix the loss of the chunk with broken citations; an empty source changes only chunk j's text.

Cost: prompt j differs from the full prompt only from chunk j's text on. The full prompt and the answer run once
with a key/value cache; every other prompt runs only its tokens from where it leaves the full prompt, plus the
answer, on that cache cut to the prefix it shares (under leave-one-out, the context up to chunk j: about half of it
on average; under the surrogate's random subsets, only the context up to the first removed chunk). Those rows are
packed end to end into a few forwards (see BIN_TOKENS), with a mask and positions that give each token exactly what
it would see in a full forward of its own prompt, so the answer's log-probabilities equal those of independent full
forwards.
Prompts are built as serving builds them (build_rag_messages, then the chat template with a generation prompt).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

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


def masked_prompts(tokenizer: Any, question: str, chunks: Sequence[Source], masks: torch.Tensor) -> list[list[int]]:
    """The prompt of each row of `masks` ([rows, chunks], True: the chunk is in the prompt, False: blanked)."""
    variants = [[c if keep else _blank(c) for c, keep in zip(chunks, row, strict=True)] for row in masks.tolist()]
    return [rag_prompt_ids(tokenizer, question, v) for v in variants]


def masked_logprobs(
    model: Any,
    tokenizer: Any,
    question: str,
    chunks: Sequence[Source],
    answer_ids: list[int],
    masks: torch.Tensor,
    batch_rows: int = 16,
    *,
    reuse_prefixes: bool = True,
) -> tuple[torch.Tensor, int]:
    """Per-token log-probabilities of `answer_ids` ([rows, answer tokens], float32 on the host) for each row of
    `masks` ([rows, chunks], True: the chunk is in the prompt, False: blanked), and the length of the prefix every
    prompt shares. `reuse_prefixes=False` runs the earlier plan (one shared prefix, then every row's rest in batches
    of `batch_rows`): same numbers, more tokens; kept to measure the two against each other."""
    prompts = masked_prompts(tokenizer, question, chunks, masks)
    # keep at least the last prompt token in every suffix: its output predicts the answer's first token
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    if reuse_prefixes:
        return _reused_prefix_logprobs(model, prompts, answer_ids), shared
    suffixes = [p[shared:] for p in prompts]
    parts = [
        _answer_logprobs(model, suffixes[i : i + batch_rows], prompts[0][:shared], answer_ids)
        for i in range(0, len(suffixes), batch_rows)
    ]
    return torch.cat(parts), shared


def _reuse_plan(prompts: list[list[int]]) -> list[tuple[int, int]]:
    """(row, tokens of row 0's prompt it keeps) for each row to run after row 0; a row whose prompt repeats an
    earlier one is left out (it gets that row's numbers). Row 0 keeps nothing: it runs first, whole."""
    plan: list[tuple[int, int]] = []
    seen = {tuple(prompts[0])}
    for row, prompt in enumerate(prompts[1:], start=1):
        if tuple(prompt) in seen:
            continue
        seen.add(tuple(prompt))
        # keep at least the last prompt token in the row's own tokens: its output predicts the answer's first token
        plan.append((row, min(_common_prefix([prompts[0], prompt]), len(prompt) - 1)))
    return plan


def forward_tokens(
    prompts: list[list[int]], answer_tokens: int, *, reuse_prefixes: bool = True, batch_rows: int = 16
) -> int:
    """Token positions the model runs to score `answer_tokens` after each of `prompts`, padding included."""
    if answer_tokens == 0:
        return 0
    if reuse_prefixes:
        # row 0 whole, then the packed rows: each runs its prompt past the kept prefix and all but the last answer
        # token (it predicts nothing)
        plan = _reuse_plan(prompts)
        sizes = [len(prompts[row]) - keep + answer_tokens - 1 for row, keep in plan]
        widths = [max(sum(sizes[i] for i in b) for b in bins) * len(bins) for bins in _passes(sizes)]
        return len(prompts[0]) + answer_tokens - 1 + sum(widths)
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)
    rest = [len(p) - shared + answer_tokens for p in prompts]
    return shared + sum(
        len(rest[i : i + batch_rows]) * max(rest[i : i + batch_rows]) for i in range(0, len(rest), batch_rows)
    )


# Rows run after row 0 are packed end to end into sequences of about BIN_TOKENS, BINS_PER_PASS sequences to a
# forward. Few forwards, because each costs a fixed overhead on a loaded CPU; short sequences, because attention
# inside one runs over all of it (masked, not skipped).
BIN_TOKENS = 512
BINS_PER_PASS = 8


def _passes(sizes: list[int]) -> list[list[list[int]]]:
    """Indices of `sizes` (tokens per row) grouped into forwards of bins (see BIN_TOKENS)."""
    bins = _bins(sizes, BIN_TOKENS)
    return [bins[i : i + BINS_PER_PASS] for i in range(0, len(bins), BINS_PER_PASS)]


def _parts(model: Any) -> tuple[Any, Any, torch.device]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), next(model.parameters()).device


def _bins(sizes: list[int], capacity: int) -> list[list[int]]:
    """Indices of `sizes` spread over as many bins as a total of `capacity` per bin needs, each to the least full
    bin, largest first: the bins come out nearly even, so padding them to the fullest wastes little."""
    if not sizes:
        return []
    bins: list[list[int]] = [[] for _ in range(-(-sum(sizes) // capacity))]
    loads = [0] * len(bins)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        at = loads.index(min(loads))
        bins[at].append(i)
        loads[at] += sizes[i]
    return bins


def _reused_prefix_logprobs(model: Any, prompts: list[list[int]], answer: list[int]) -> torch.Tensor:
    """Per-token log-probability of `answer` after each prompt. Row 0 runs whole with a key/value cache; every other
    row runs only its tokens after the prefix it shares with row 0 (for a removed chunk: everything before it),
    on that cache, packed (see BIN_TOKENS). A 4D mask lets each token see its row's kept prefix and its row's
    earlier tokens only, and the positions are those the row has in its own prompt, so every kept key/value is the
    one a full forward of the row computes."""
    out = torch.zeros(len(prompts), len(answer))
    if not answer:
        return out
    decoder, head, device = _parts(model)
    targets = torch.tensor(answer, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            first = decoder(input_ids=torch.tensor([prompts[0] + answer[:-1]], device=device), use_cache=True)
            states = first.last_hidden_state[0, len(prompts[0]) - 1 :]
            out[0] = torch.log_softmax(head(states).float(), dim=-1).gather(1, targets[:, None])[:, 0].cpu()
            layers = [(layer.keys, layer.values) for layer in first.cache.layers]
            plan = _reuse_plan(prompts)
            own = [prompts[row][keep:] + answer[:-1] for row, keep in plan]
            for group in _passes([len(o) for o in own]):
                logp = _packed_pass(decoder, head, layers, [[(plan[i], own[i]) for i in b] for b in group], answer)
                for b, rows in zip(group, logp, strict=True):
                    for i, row_logp in zip(b, rows, strict=True):
                        out[plan[i][0]] = row_logp
        # a repeated prompt: the numbers of its first occurrence
        first_of: dict[tuple[int, ...], int] = {}
        for row, prompt in enumerate(prompts):
            first_of.setdefault(tuple(prompt), row)
            out[row] = out[first_of[tuple(prompt)]]
        return out
    finally:
        model.train(was_training)


def _packed_pass(
    decoder: Any,
    head: Any,
    layers: list[tuple[torch.Tensor, torch.Tensor]],
    bins: list[list[tuple[tuple[int, int], list[int]]]],
    answer: list[int],
) -> list[list[torch.Tensor]]:
    """One forward over `bins` (each: rows as ((row, kept), own tokens), packed end to end) on row 0's cache `layers`
    cut to the longest kept prefix; the answer's per-token log-probabilities of each row, bin by bin."""
    device = layers[0][0].device
    kept = max(keep for b in bins for (_, keep), _ in b)
    width = max(sum(len(tokens) for _, tokens in b) for b in bins)
    ids = torch.zeros(len(bins), width, dtype=torch.long)
    positions = torch.zeros(len(bins), width, dtype=torch.long)
    # True: may attend. Padding attends to itself only, so no row of the mask is empty.
    allowed = torch.zeros(len(bins), 1, width, kept + width, dtype=torch.bool)
    allowed[:, 0, torch.arange(width), kept + torch.arange(width)] = True
    at = []
    for n, b in enumerate(bins):
        offset = 0
        for (_, keep), tokens in b:
            end = offset + len(tokens)
            ids[n, offset:end] = torch.tensor(tokens)
            positions[n, offset:end] = torch.arange(keep, keep + len(tokens))
            allowed[n, 0, offset:end, :keep] = True
            allowed[n, 0, offset:end, kept + offset : kept + end] = torch.ones(len(tokens), len(tokens)).tril().bool()
            # the row's last prompt token and its answer tokens but the last predict the answer
            at.append((n, end - len(answer)))
            offset = end
    dtype = layers[0][0].dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    cache = DynamicCache(
        [
            (k[..., :kept, :].expand(len(bins), -1, -1, -1), v[..., :kept, :].expand(len(bins), -1, -1, -1))
            for k, v in layers
        ]
    )
    hidden = decoder(
        input_ids=ids.to(device),
        position_ids=positions.to(device),
        attention_mask=mask.to(device),
        cache=cache,
        use_cache=True,
    ).last_hidden_state
    picked = torch.stack([hidden[n, s : s + len(answer)] for n, s in at])
    targets = torch.tensor(answer, device=device).expand(len(at), -1)
    logp = torch.log_softmax(head(picked).float(), dim=-1).gather(2, targets[..., None])[..., 0].cpu()
    out: list[list[torch.Tensor]] = []
    i = 0
    for b in bins:
        out.append(list(logp[i : i + len(b)]))
        i += len(b)
    return out


def _answer_logprobs(model: Any, suffixes: list[list[int]], prefix: list[int], answer: list[int]) -> torch.Tensor:
    """Per-token log-probability of `answer` after prefix + each suffix; one cached prefix pass, one batched pass."""
    if not answer:
        return torch.zeros(len(suffixes), 0)
    decoder, head, device = _parts(model)
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
