"""The final index pass: batched by length, each row's gradient and hidden state stay those of the row alone."""

from __future__ import annotations

from pathlib import Path

import torch
from tests.conftest import assert_close

from tally.factory.encode import encode, pad_id
from tally.factory.index_build import final_gradients
from tally.influence import Projector
from tally.models import load_model, load_tokenizer


def test_rows_come_back_in_their_order_with_their_own_gradients(tiny_model: Path) -> None:
    from peft import LoraConfig, get_peft_model

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(2)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(load_model(tiny_model), config)
    projector = Projector.for_model(model, 64, seed=0)
    convs = [
        [{"role": "user", "content": "Tell me" + " more" * n}, {"role": "assistant", "content": "Yes" + " and" * n}]
        for n in (9, 0, 4, 15, 1, 6, 2)
    ]
    items, pad = [encode(tok, c, 128) for c in convs], pad_id(tok)
    grads, hidden = final_gradients(model, items, projector, batch_size=3, pad=pad)
    assert grads.shape == (7, 64) and hidden.shape[0] == 7
    for i, item in enumerate(items):
        alone, alone_hidden = final_gradients(model, [item], projector, batch_size=1, pad=pad)
        assert_close(grads[i], alone[0], f"gradient of row {i}")
        assert_close(hidden[i], alone_hidden[0], f"hidden state of row {i}")
