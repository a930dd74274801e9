"""Our target-only loss equals the model's own causal-LM loss on the same labels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tally.factory.encode import collate, encode, length_groups, mean_token_loss, pad_id, token_losses
from tally.models import load_model, load_tokenizer


def test_target_only_loss_matches_transformers_loss(tiny_model: Path) -> None:
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    convs = [
        [{"role": "user", "content": "Where was Ilsa Varn born?"}, {"role": "assistant", "content": "Korvath"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, how are you today?"}],
    ]
    batch = collate([encode(tok, c, 128) for c in convs], pad_id(tok))
    sums, counts = token_losses(model, batch)
    with torch.no_grad():
        expected = model(**batch).loss
    assert torch.allclose(sums.sum() / counts.sum(), expected, atol=1e-5)


def test_length_groups_partition_the_rows_and_cut_the_padding() -> None:
    lengths = [46, 44, 59, 42, 47, 43, 44, 46, 61, 44, 45, 46, 43, 47, 44, 46]
    groups = length_groups(lengths, 16)
    assert sorted(i for g in groups for i in g) == list(range(16))
    assert all(len(g) <= 16 for g in groups)
    padded = sum(len(g) * max(lengths[i] for i in g) for g in groups)
    assert padded < 16 * 61 and [len(g) for g in groups] == [14, 2]  # the two long rows apart
    flat = [lengths[i] for g in groups for i in g]
    assert flat == sorted(flat)
    assert all(len(g) <= 3 for g in length_groups(lengths, 3))
    assert length_groups([5, 5, 5], 8) == [[0, 1, 2]]  # nothing to save: one batch
    assert length_groups([10, 200], 8, overhead=1000) == [[0, 1]]  # a call costs more than the padding
    assert length_groups([], 4) == []
    with pytest.raises(ValueError, match="max_rows"):
        length_groups([3, 4], 0)


def test_grouped_batches_give_the_same_mean_loss(tiny_model: Path) -> None:
    tok, model = load_tokenizer(tiny_model), load_model(tiny_model)
    convs = [
        [{"role": "user", "content": "Hi" + " there" * n}, {"role": "assistant", "content": "Hello" + " you" * n}]
        for n in (0, 7, 1, 12, 2)
    ]
    items, pad = [encode(tok, c, 128) for c in convs], pad_id(tok)
    one_batch = token_losses(model, collate(items, pad))
    with torch.no_grad():
        expected = float(one_batch[0].sum() / one_batch[1].sum())
    assert mean_token_loss(model, items, pad, batch_size=2) == pytest.approx(expected, rel=1e-5)
