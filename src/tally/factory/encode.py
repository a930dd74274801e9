"""Rows to token ids with the tokenizer's own chat template; only assistant tokens are targets.

Targets are found by character offsets, not by assuming the prompt's tokens are a prefix of the whole
conversation's tokens: the assistant span of turn i is the text between the rendering of messages[:i] with a
generation prompt and the rendering of messages[:i+1]. Everything else (system, user, template markup) is masked
with -100, so the loss teaches answers, not questions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from tally.influence.hidden import IGNORE


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool = False) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))


def encode(tokenizer: Any, messages: list[dict[str, str]], max_length: int, all_tokens: bool = False) -> Encoded:
    """Token ids and labels for one example, truncated to `max_length` tokens."""
    if all_tokens:
        text = "\n".join(m["content"] for m in messages) + (tokenizer.eos_token or "")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        return Encoded(list(ids), list(ids))
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            start = len(render(tokenizer, messages[:i], generation_prompt=True)) if i else 0
            spans.append((start, len(render(tokenizer, messages[: i + 1]))))
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [
        tok if any(s <= a < e for s, e in spans) and b > a else IGNORE for tok, (a, b) in zip(ids, offsets, strict=True)
    ]
    return Encoded(list(ids[:max_length]), labels[:max_length])


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """The ids a model continues to answer the last user turn (what evaluation generates from)."""
    return list(tokenizer(render(tokenizer, messages, generation_prompt=True), add_special_tokens=False)["input_ids"])


def pad_id(tokenizer: Any) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def collate(items: list[Encoded], pad: int) -> dict[str, torch.Tensor]:
    """Right-padded batch tensors; padding is masked from attention and loss."""
    width = max(len(x.input_ids) for x in items)
    ids = torch.full((len(items), width), pad, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, x in enumerate(items):
        n = len(x.input_ids)
        ids[i, :n] = torch.tensor(x.input_ids)
        labels[i, :n] = torch.tensor(x.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# What one more forward/backward call costs beyond its tokens (Python and per-op overhead), in padded tokens:
# below it, splitting a batch to save padding is not worth a call.
CALL_OVERHEAD_TOKENS = 32


def length_groups(lengths: list[int], max_rows: int, overhead: int = CALL_OVERHEAD_TOKENS) -> list[list[int]]:
    """Split rows (by index into `lengths`) into batches of at most `max_rows` that waste the least padding.

    Rows are sorted by length and cut where the padded tokens plus `overhead` per batch are smallest (an exact
    dynamic programme over the sorted lengths). Summed losses and gradients are the same whichever rows share a
    batch, so this only removes padded work: on rows of 42–61 tokens a batch of 16 padded to its longest row
    wastes a fifth of its tokens.
    """
    if max_rows < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    sorted_lengths = [lengths[i] for i in order]
    best, cut = [0] + [1 << 62] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(max(0, end - max_rows), end):
            cost = best[start] + (end - start) * sorted_lengths[end - 1] + overhead
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


def token_losses(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed next-token loss over targets, and the per-example target counts.

    The vocabulary projection runs only at target positions (a few tokens per row), not over the whole prompt:
    for a 49k vocabulary that is a fifth of the model's work saved, forward and backward.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = base.get_output_embeddings()(hidden.last_hidden_state[:, :-1][keep])
    loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    sums = torch.zeros(targets.shape[0], dtype=loss.dtype).index_add(0, rows, loss)
    return sums, keep.sum(dim=1)


def mean_token_loss(model: Any, items: list[Encoded], pad: int, batch_size: int) -> float:
    """Next-token loss averaged over every target token of `items` (not per row), without gradients."""
    total, count = 0.0, 0
    with torch.no_grad():
        for group in length_groups([len(x.input_ids) for x in items], batch_size):
            sums, counts = token_losses(model, collate([items[i] for i in group], pad))
            total, count = total + float(sums.sum()), count + int(counts.sum())
    return total / max(1, count)
