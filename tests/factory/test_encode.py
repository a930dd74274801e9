"""Our target-only loss equals the model's own causal-LM loss on the same labels."""

from __future__ import annotations

from pathlib import Path

import torch

from tally.factory.encode import collate, encode, pad_id, token_losses
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
