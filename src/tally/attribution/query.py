"""Per-answer signals from the model itself: the answer's projected LoRA gradient, its mean hidden state, its log p.

One base model holds every adapter being attributed (PEFT, one named adapter each, least recently used evicted),
plus one randomly initialised twin per adapter config: the null baseline. A query is one forward and one
backward of the answer's mean token loss given the prompt, with the same capture hooks and the same seeded
projection as the factory's index pass, so query and index live in one space.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from tally.influence import GradCapture, HiddenCapture, Projector
from tally.influence.projection import lora_modules
from tally.models import load_model

IGNORE = -100
T = TypeVar("T")


@dataclass(frozen=True)
class QuerySignals:
    gradient: torch.Tensor  # (dims,) projected
    hidden: torch.Tensor  # (hidden,) mean over answer-predicting positions
    logprob: float  # sum of the answer's token log-probabilities


class QueryModel:
    """Thread-safe; `signals(...)` for an adapter (by directory) and, with `null=True`, for its random twin."""

    def __init__(self, model_dir: Path, max_adapters: int = 4) -> None:
        self.model_dir, self.max_adapters = model_dir, max_adapters
        self._peft: Any = None
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter key -> null twin key
        self._lock = threading.Lock()
        self._base: Any = None
        self._projectors: dict[str, Projector] = {}

    def _ensure(self, key: str, directory: Path) -> None:
        from peft import LoraConfig, PeftModel

        if key in self._loaded:
            self._loaded.move_to_end(key)
            return
        if self._peft is None:
            self._peft = PeftModel.from_pretrained(load_model(self.model_dir), str(directory), adapter_name=key)
        else:
            self._peft.load_adapter(str(directory), adapter_name=key)
        config = LoraConfig.from_pretrained(str(directory))
        config.init_lora_weights = False  # random A and B: an adapter that learned nothing
        null = f"null_{key}"
        seed = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._peft.add_adapter(null, config)
        self._loaded[key] = null
        while len(self._loaded) > self.max_adapters:
            old, old_null = self._loaded.popitem(last=False)
            self._peft.delete_adapter(old)
            self._peft.delete_adapter(old_null)
        self._peft.eval()

    def run(self, key: str | None, directory: Path | None, fn: Callable[[Any], T]) -> T:
        """`fn(model)` with that adapter active (or none: the base model), under the lock, without gradients."""
        with self._lock, torch.inference_mode():
            if key is None or directory is None:
                if self._peft is None:
                    if self._base is None:
                        self._base = load_model(self.model_dir).eval()
                    return fn(self._base)
                with self._peft.disable_adapter():
                    return fn(self._peft)
            self._ensure(key, directory)
            self._peft.set_adapter(key)
            return fn(self._peft)

    def signals(
        self,
        key: str,
        directory: Path,
        projection: dict[str, Any],
        prompt_ids: list[int],
        answer_ids: list[int],
        *,
        null: bool = False,
    ) -> QuerySignals:
        if not answer_ids:
            raise ValueError("the answer has no tokens to attribute")
        with self._lock:
            self._ensure(key, directory)
            name = self._loaded[key] if null else key
            projector = self._projectors.get(key)
            if projector is None:
                projector = self._projectors[key] = Projector.from_description(projection)
            return self._run(name, projector, prompt_ids, answer_ids)

    def _run(self, name: str, projector: Projector, prompt_ids: list[int], answer_ids: list[int]) -> QuerySignals:
        peft = self._peft
        peft.set_adapter(name)
        for param_name, param in peft.named_parameters():
            param.requires_grad_(f".{name}." in param_name)
        ids = torch.tensor([prompt_ids + answer_ids])
        labels = torch.tensor([[IGNORE] * len(prompt_ids) + answer_ids])
        suffix = f".{name}"
        modules = lora_modules(peft)
        if not modules:
            raise ValueError(f"adapter {name} has no trainable LoRA modules")
        base = peft.get_base_model()
        with (
            GradCapture(peft, projector, rename=lambda m: m.removesuffix(suffix) + ".default") as grads,
            HiddenCapture(peft) as hidden,
        ):
            grads.begin(1)
            hidden.begin(labels)
            out = base.get_decoder()(input_ids=ids)
            keep = labels[:, 1:] != IGNORE
            logits = base.get_output_embeddings()(out.last_hidden_state[:, :-1][keep]).float()
            losses = torch.nn.functional.cross_entropy(logits, labels[:, 1:][keep], reduction="none")
            losses.mean().backward()
            gradient = grads.result()[0]
            mean_hidden = hidden.result()[0]
        peft.zero_grad(set_to_none=True)
        return QuerySignals(gradient, mean_hidden, -float(losses.detach().sum()))
