"""The final index pass: batched by length, each row's gradient and hidden state stay those of the row alone; its
precision follows the hardware."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.conftest import assert_close

from tally.factory import index_build
from tally.factory.encode import encode, pad_id
from tally.factory.index_build import final_gradients, pass_precision
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


def _model_and_rows(tiny_model: Path):
    from peft import LoraConfig, get_peft_model

    tok = load_tokenizer(tiny_model)
    torch.manual_seed(3)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    model = get_peft_model(load_model(tiny_model), config)
    convs = [
        [{"role": "user", "content": "Name" + " a thing" * n}, {"role": "assistant", "content": "A" + " cup" * n}]
        for n in (3, 8, 1, 5)
    ]
    return model, [encode(tok, c, 128) for c in convs], pad_id(tok)


def test_a_bf16_pass_gives_the_fp32_pass_directions(tiny_model: Path) -> None:
    model, items, pad = _model_and_rows(tiny_model)
    projector = Projector.for_model(model, 64, seed=0)
    exact, exact_hidden = final_gradients(model, items, projector, batch_size=2, pad=pad)
    fast, fast_hidden = final_gradients(model, items, projector, batch_size=2, pad=pad, precision="bf16")
    assert fast.shape == exact.shape
    assert not torch.equal(fast, exact)  # it did run in bf16
    # bf16 keeps 8 bits of mantissa: each row's direction, which the scores use, stays that of the fp32 pass
    assert torch.nn.functional.cosine_similarity(fast, exact, dim=1).min() > 0.99
    assert torch.nn.functional.cosine_similarity(fast_hidden, exact_hidden, dim=1).min() > 0.99
    with pytest.raises(ValueError, match="fp32 or bf16, got 'fp16'"):
        final_gradients(model, items, projector, batch_size=2, pad=pad, precision="fp16")


@pytest.mark.parametrize(
    ("flags", "setting", "expected"),
    [
        ({"avx2", "fma", "avx512_bf16"}, "auto", "bf16"),
        ({"avx2", "amx_bf16"}, "auto", "bf16"),
        ({"avx2", "fma", "avx512f"}, "auto", "fp32"),  # emulated bf16 would be slower than fp32
        (set(), "auto", "fp32"),  # no /proc/cpuinfo
        ({"avx2"}, "bf16", "bf16"),  # asked for by name: the operator's choice
        ({"avx512_bf16"}, "fp32", "fp32"),
    ],
)
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, flags, setting, expected) -> None:
    monkeypatch.setattr(index_build, "cpu_flags", lambda: flags)
    assert pass_precision(setting) == expected
