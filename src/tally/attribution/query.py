"""Per-answer signals from the model itself: the answer's projected LoRA gradient, its mean hidden state, its log p.

One base model holds every adapter being attributed (PEFT, one named adapter each, least recently used evicted),
plus one randomly initialised twin per adapter config: the null baseline. A query is one forward and one
backward of the answer's mean token loss given the prompt, projected with the same seeded projection as the
factory's index pass (and the same capture hooks where an adapter has two rows), so query and index live in one
space.

A `fast` query may start from the hidden states the engine kept while it answered (those entering the first of the
top layers it differentiates): then only those layers run, since the layers below have no gradient to give.
"""

from __future__ import annotations

import hashlib
import json
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from tally.influence import GradCapture, HiddenCapture, Projector, project_weight_grads
from tally.influence.contrast import contrast_weights
from tally.influence.hidden import IGNORE
from tally.influence.projection import layer_number
from tally.models import load_model

# transformers' own deprecation, raised inside PEFT's backward on every answer: nothing a user can act on.
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

T = TypeVar("T")


@dataclass(frozen=True)
class QuerySignals:
    gradient: torch.Tensor  # (dims,) projected
    hidden: torch.Tensor  # (hidden,) mean over answer-predicting positions
    logprob: float  # sum of the answer's token log-probabilities
    contrast: torch.Tensor | None = None  # (dims,) projected gradient of the contrast-weighted loss (see influence)
    # checkpoint name -> (dims,) the answer's gradient at that training checkpoint's weights (TracIn)
    checkpoints: dict[str, torch.Tensor] = field(default_factory=dict)
    from_layer: int | None = None  # started from the engine's states entering this layer (None: the whole forward)


def _as_default(adapter: str) -> Callable[[str], str]:
    """Module names of `adapter` as the index's projection knows them (trained under the name `default`)."""
    suffix = f".{adapter}"
    return lambda module: module.removesuffix(suffix) + ".default"


def _of_adapter(adapter: str) -> Callable[[str], bool]:
    suffix = f".{adapter}"
    return lambda module: module.endswith(suffix)


class QueryModel:
    """Thread-safe; `signals(...)` for an adapter (by directory) and, with `null=True`, for its random twin."""

    def __init__(self, model_dir: Path, max_adapters: int = 4) -> None:
        self.model_dir, self.max_adapters = model_dir, max_adapters
        self._peft: Any = None
        self._loaded: OrderedDict[str, str] = OrderedDict()  # adapter key -> null twin key
        self._checkpoints: dict[str, dict[str, str]] = {}  # adapter key -> checkpoint name -> loaded adapter name
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
        # Seeded by the config, not the adapter hash: PEFT writes target_modules in set order, so identical weights
        # can hash differently from one process to the next, and the null must not change with them.
        shape = json.dumps({"r": config.r, "alpha": config.lora_alpha, "targets": sorted(config.target_modules)})
        seed = int.from_bytes(hashlib.sha256(shape.encode()).digest()[:4], "little")
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self._peft.add_adapter(null, config)
        self._loaded[key] = null
        while len(self._loaded) > self.max_adapters:
            old, old_null = self._loaded.popitem(last=False)
            for name in [old, old_null, *self._checkpoints.pop(old, {}).values()]:
                self._peft.delete_adapter(name)
        self._peft.eval()

    def _ensure_checkpoints(self, key: str, checkpoints: dict[str, Path]) -> dict[str, str]:
        """Load the adapter's training checkpoints (after `_ensure(key, ...)`) as adapters of their own; returns
        checkpoint name -> loaded adapter name. Evicted with the adapter."""
        loaded = self._checkpoints.setdefault(key, {})
        for name, directory in sorted(checkpoints.items()):
            if name not in loaded:
                adapter = f"{key}_ckpt{len(loaded)}"
                self._peft.load_adapter(str(directory), adapter_name=adapter)
                loaded[name] = adapter
        self._peft.eval()
        return {name: loaded[name] for name in checkpoints}

    def run(self, key: str | None, directory: Path | None, fn: Callable[[Any], T]) -> T:
        """`fn(model)` with that adapter active (or none: the base model), under the lock, without gradients."""
        with self._lock:
            # Weights are loaded outside inference mode: tensors created inside it can never take gradients,
            # and the same adapter answers gradient queries later.
            if key is None or directory is None:
                if self._peft is None:
                    if self._base is None:
                        self._base = load_model(self.model_dir).eval()
                    with torch.inference_mode():
                        return fn(self._base)
                with self._peft.disable_adapter(), torch.inference_mode():
                    return fn(self._peft)
            self._ensure(key, directory)
            self._peft.set_adapter(key)
            with torch.inference_mode():
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
        contrast: bool = False,
        checkpoints: dict[str, Path] | None = None,
        layers: int = 0,
        states: tuple[int, torch.Tensor] | None = None,
    ) -> QuerySignals:
        """The answer's signals through the adapter (or, with `null`, through its random twin); with `contrast`,
        also the gradient of the answer's loss weighted by each token's log-probability rise over the base model;
        with `checkpoints` (name -> adapter directory), also the answer's gradient at each checkpoint's weights.
        `layers` > 0 takes the gradients of the LoRA weights in the top that many of the layers the adapter adapts
        (the others' slices of the projection stay zero): the backward stops there and the layers below keep no
        activations. `states` (layer, [tokens, hidden]): the hidden states entering that layer for the prompt and
        the answer but its last token, as the engine ran them; where that layer is at or below the first layer
        differentiated (and no contrast or checkpoint is asked), only the layers from it run."""
        return self._signals(
            key, directory, projection, prompt_ids, answer_ids, [not null], contrast, checkpoints, layers,
            states if not null else None,
        )[0]  # fmt: skip

    def signals_pair(
        self,
        key: str,
        directory: Path,
        projection: dict[str, Any],
        prompt_ids: list[int],
        answer_ids: list[int],
        *,
        contrast: bool = False,
        checkpoints: dict[str, Path] | None = None,
        layers: int = 0,
    ) -> tuple[QuerySignals, QuerySignals]:
        """The signals through the adapter and through its random twin (the null), in one mixed batch."""
        real, null = self._signals(
            key, directory, projection, prompt_ids, answer_ids, [True, False], contrast, checkpoints, layers
        )
        return real, null

    def _signals(
        self,
        key: str,
        directory: Path,
        projection: dict[str, Any],
        prompt_ids: list[int],
        answer_ids: list[int],
        trained: list[bool],
        contrast: bool = False,
        checkpoints: dict[str, Path] | None = None,
        layers: int = 0,
        states: tuple[int, torch.Tensor] | None = None,
    ) -> list[QuerySignals]:
        if not answer_ids:
            raise ValueError("the answer has no tokens to attribute")
        with self._lock:
            self._ensure(key, directory)
            at = self._ensure_checkpoints(key, checkpoints) if checkpoints and trained[0] else {}
            projector = self._projectors.get(key)
            if projector is None:
                projector = self._projectors[key] = Projector.from_description(projection)
            names = [key if t else self._loaded[key] for t in trained]
            return self._run(names, projector, prompt_ids, answer_ids, contrast, at, layers, states)

    def _base_logprobs(self, prompt_ids: list[int], answer_ids: list[int]) -> torch.Tensor:
        """(answer tokens,) the base model's log-probability of each answer token given the prompt."""
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad(), self._peft.disable_adapter():
            logits = self._peft(input_ids=ids, logits_to_keep=len(answer_ids) + 1).logits[0, :-1].float()
        return torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(answer_ids).unsqueeze(1)).squeeze(1)

    def _run(
        self,
        names: list[str],
        projector: Projector,
        prompt_ids: list[int],
        answer_ids: list[int],
        contrast: bool = False,
        checkpoints: dict[str, str] | None = None,
        layers: int = 0,
        states: tuple[int, torch.Tensor] | None = None,
    ) -> list[QuerySignals]:
        """One forward and backward of a batch holding the same sequence once per adapter (PEFT's mixed batch):
        each adapter's LoRA weights get the gradient of its own row only. With `contrast` each adapter has a second
        row whose loss weighs the answer's tokens by their log-probability rise over the base model (one more
        forward, of the base model, without gradients). `checkpoints` (checkpoint name -> loaded adapter) add one
        row each, whose gradients go to the first adapter's signals. A batch of one adapter's rows runs PEFT's plain
        path; the mixed batch's per-row gathers are paid only where adapters differ. `layers` > 0: gradients of the
        top that many layers only; `states` as in `signals`."""
        checkpoints = checkpoints or {}
        peft = self._peft
        # first: leaving PEFT's disable_adapter() re-activates one adapter, which resets which weights take gradients
        base = self._base_logprobs(prompt_ids, answer_ids) if contrast else None
        per = 2 if contrast else 1
        batch_names = [n for n in names for _ in range(per)] + list(checkpoints.values())
        mixed = len(set(batch_names)) > 1
        if not mixed:
            peft.set_adapter(batch_names[0])  # one adapter: PEFT's plain path, without the mixed batch's gathers
        with_grad = [*names, *checkpoints.values()]
        # one walk over the parameters: each one's layer, and whether it belongs to an adapter of this batch
        params = [
            (param, layer_number(name), any(f".{a}." in name for a in with_grad))
            for name, param in peft.named_parameters()
        ]
        # the top `layers` of the layers these adapters adapt (an adapter may leave the top of the model alone);
        # every weight where none lies in a numbered layer (other module names, or `lm_head` alone)
        adapted = sorted({layer for _, layer, ours in params if ours and layer is not None})
        top = set(adapted[-layers:]) if layers > 0 and adapted else None
        for param, layer, ours in params:
            param.requires_grad_(ours and (top is None or layer in top))
        # one row (no twin, contrast or checkpoint) and the engine's states below the top layers: run only those
        tokens = len(prompt_ids) + len(answer_ids) - 1
        start = _states_start(states, top, tokens, self._hidden_size()) if len(batch_names) == 1 else None
        if start is not None:
            assert states is not None
            return [self._run_from(names[0], projector, states[1], start, answer_ids)]
        rows = len(batch_names)
        ids = torch.tensor([prompt_ids + answer_ids] * rows)
        labels = torch.tensor([[IGNORE] * len(prompt_ids) + answer_ids] * rows)
        peft.zero_grad(set_to_none=True)  # gradients are read from .grad: nothing of an earlier call may remain
        with ExitStack() as stack:
            stack.callback(peft.zero_grad, set_to_none=True)
            # With one row per adapter, an adapter's accumulated weight gradient is its row's: it is projected after
            # the backward. Only the contrast (two rows per adapter) needs per-example capture hooks.
            captures = []
            if contrast:
                for name in names:
                    capture = GradCapture(peft, projector, rename=_as_default(name), only=_of_adapter(name))
                    if not capture.modules:
                        raise ValueError(f"adapter {name} has no trainable LoRA modules")
                    captures.append(stack.enter_context(capture))
                    capture.begin(per)
            hidden = stack.enter_context(HiddenCapture(peft))
            hidden.begin(labels)
            # the vocabulary projection only where an answer token is predicted (the last prompt position on):
            # 49k logits per prompt position would be a tenth of the query's work, forward and backward
            answer = len(answer_ids)
            by_adapter = {"adapter_names": batch_names} if mixed else {}
            out_logits = peft(input_ids=ids, logits_to_keep=answer + 1, **by_adapter).logits
            targets = torch.tensor(answer_ids).repeat(rows)
            losses = torch.nn.functional.cross_entropy(
                out_logits[:, :-1].float().reshape(rows * answer, -1), targets, reduction="none"
            ).view(rows, answer)
            weights = torch.full_like(losses, 1.0 / losses.shape[1])
            if base is not None:
                weights[1 : len(names) * per : 2] = contrast_weights(
                    -losses[1 : len(names) * per : 2], base.expand(len(names), -1)
                )
            (losses * weights).sum().backward()
            means = hidden.result()

            def projected(name: str) -> torch.Tensor:
                return project_weight_grads(peft, projector, rename=_as_default(name), only=_of_adapter(name))

            at_checkpoint = {ckpt: projected(name) for ckpt, name in checkpoints.items()}
            out = []
            for i, name in enumerate(names):
                grads = captures[i].result() if contrast else projected(name).unsqueeze(0)
                out.append(
                    QuerySignals(
                        grads[0], means[i * per], -float(losses[i * per].detach().sum()),
                        grads[1] if contrast else None, at_checkpoint if i == 0 else {},
                    )
                )  # fmt: skip
        return out

    def _hidden_size(self) -> int:
        return int(self._peft.get_base_model().config.hidden_size)

    def _run_from(
        self, name: str, projector: Projector, states: torch.Tensor, start: int, answer_ids: list[int]
    ) -> QuerySignals:
        """`_run` for one adapter from `states` [tokens, hidden], the hidden states entering layer `start`: only the
        layers from there run (the weights that take gradients are already chosen, all at or above `start`)."""
        from transformers.masking_utils import create_causal_mask

        peft = self._peft
        causal = peft.get_base_model()
        decoder = causal.get_decoder()
        answer = len(answer_ids)
        peft.zero_grad(set_to_none=True)
        try:
            weight = next(causal.parameters())
            x = states[None].to(device=weight.device, dtype=weight.dtype)
            positions = torch.arange(x.shape[1])[None]
            mask = create_causal_mask(
                config=causal.config, inputs_embeds=x, attention_mask=None, cache=None, position_ids=positions
            )
            rotary = decoder.rotary_emb(x, position_ids=positions)
            for layer in decoder.layers[start:]:
                x = layer(x, attention_mask=mask, position_ids=positions, position_embeddings=rotary)
            hidden = decoder.norm(x[:, -answer:])  # the positions that predict the answer's tokens
            logits = causal.lm_head(hidden)[0].float()
            targets = torch.tensor(answer_ids, device=logits.device)
            losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
            losses.mean().backward()
            gradient = project_weight_grads(peft, projector, rename=_as_default(name), only=_of_adapter(name))
        finally:
            peft.zero_grad(set_to_none=True)
        mean = hidden.detach().float().mean(dim=1)[0]
        return QuerySignals(gradient, mean, -float(losses.detach().sum()), from_layer=start)


def _states_start(
    states: tuple[int, torch.Tensor] | None, top: set[int] | None, tokens: int, hidden: int
) -> int | None:
    """The layer a query may start from with the engine's `states`: theirs, where it is at or below every layer
    differentiated and they are those of the `tokens` run (one row each); None where the whole forward must run."""
    if states is None or top is None:
        return None
    layer, tensor = states
    if tensor.dim() != 2 or tensor.shape[0] != tokens or tensor.shape[1] != hidden or layer > min(top):
        return None
    return layer
