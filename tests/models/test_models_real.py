"""The real base model, as `tally models pull` leaves it in the default cache (the Makefile pulls it first)."""

from __future__ import annotations

import time

import pytest
import torch

from tally.config import load_settings
from tally.models import ModelNotPulledError, load_model, load_tokenizer, resolve_model


@pytest.mark.slow
def test_smollm2_answers_paris() -> None:
    settings = load_settings().models
    try:
        path = resolve_model(settings.default, settings.cache_dir)
    except ModelNotPulledError:
        pytest.skip(f"{settings.default} is not pulled into {settings.cache_dir}: run `tally models pull`")

    started = time.perf_counter()
    model, tokenizer = load_model(path), load_tokenizer(path)
    assert time.perf_counter() - started < 5  # fp32 safetensors, not GGUF (~0.2 s; generous for slow CI)

    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer
