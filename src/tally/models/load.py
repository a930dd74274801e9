"""Loading a model directory (a pulled base model or any local Hugging Face model) for inference."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_model(path: Path | str, dtype: torch.dtype = torch.float32, device: str | torch.device | None = None) -> Any:
    """The causal LM in `path`, in eval mode.

    Safetensors only (`use_safetensors=True`): a directory with only pickled weights is refused rather than
    unpickled. Loading the fp32 SmolLM2-135M that `pull` writes takes ~0.1 s on CPU.
    """
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, use_safetensors=True)
    if device is not None:
        model = model.to(device)
    return model.eval()


def load_tokenizer(path: Path | str) -> Any:
    """The tokenizer in `path`, with its chat template when the directory has one."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
