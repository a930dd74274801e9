"""Per-example gradients of the LoRA weights, captured inside an ordinary batched backward pass.

For a linear layer y = x W^T without bias, example b's gradient is sum_t g[b,t]^T x[b,t] (g: the gradient of the
loss at y). A forward hook keeps x and hooks y's gradient; when backward reaches y, the per-example gradient is
formed with one einsum and projected at once, so only the (batch, dims) projection is kept. The loss must be a
sum over examples; `scale` (per example) turns each example's share of it into the gradient of its own loss.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from tally.influence.projection import Projector, lora_modules


def _selected(model: nn.Module, only: Callable[[str], bool] | None) -> dict[str, nn.Linear]:
    """The trainable LoRA modules `only` accepts (all of them without it), by name."""
    return {n: m for n, m in lora_modules(model).items() if only is None or only(n)}


class GradCapture:
    """Use as a context manager around forward + backward; `begin(batch_size, scale)` before each forward."""

    def __init__(
        self,
        model: nn.Module,
        projector: Projector,
        rename: Callable[[str], str] | None = None,
        only: Callable[[str], bool] | None = None,
    ) -> None:
        """`rename` maps a module's name to the projector's (an adapter loaded under another name than `default`);
        `only` keeps the modules it accepts (one adapter's, when several are trained in one mixed batch)."""
        self.model, self.projector = model, projector
        self.modules = _selected(model, only)
        self._rename = rename or (lambda name: name)
        self._handles: list[Any] = []
        self._out: torch.Tensor | None = None
        self._active = False
        self._scale: torch.Tensor | None = None

    def __enter__(self) -> GradCapture:
        for name, mod in self.modules.items():
            self._handles.append(mod.register_forward_hook(self._forward_hook(self._rename(name))))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def begin(self, batch_size: int | None = None, scale: torch.Tensor | None = None) -> None:
        """Start a batch (before its forward); projections accumulate until `result()`.

        `batch_size` may be left out: the buffer is then sized from the first gradient that arrives.
        """
        self._active = True
        self._out = torch.zeros(batch_size, self.projector.dims) if batch_size else None
        self._scale = scale

    def result(self) -> torch.Tensor:
        """(batch, dims) projected per-example gradients of the batch since `begin`."""
        if not self._active:
            raise RuntimeError("begin() was not called")
        out, self._out, self._active = self._out, None, False
        return out if out is not None else torch.zeros(0, self.projector.dims)

    def _forward_hook(self, name: str) -> Any:
        def hook(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if not self._active or not output.requires_grad:
                return
            x = inputs[0].detach()

            def on_grad(g: torch.Tensor) -> None:
                per_example = torch.einsum("bto,bti->boi", g.float(), x.float())
                if self._scale is not None:
                    per_example = per_example * self._scale.view(-1, 1, 1)
                if self._out is None:
                    self._out = torch.zeros(per_example.shape[0], self.projector.dims)
                self.projector.add(name, per_example, self._out)

            output.register_hook(on_grad)

        return hook


def project_weight_grads(
    model: nn.Module,
    projector: Projector,
    rename: Callable[[str], str] | None = None,
    only: Callable[[str], bool] | None = None,
) -> torch.Tensor:
    """(dims,) the projection of the LoRA weights' accumulated `.grad`, after a backward.

    Where an adapter's weights saw exactly one example (a query: one row per adapter in a mixed batch), their
    gradient is that example's, so this replaces the capture hooks: autograd forms it once (the hooks would form it
    a second time) and nothing runs per layer during the backward."""
    rename = rename or (lambda name: name)
    modules = _selected(model, only)
    if not modules:
        raise ValueError("no trainable LoRA module to take the gradient of")
    with_grad = {name: m.weight.grad for name, m in modules.items() if m.weight.grad is not None}
    if not with_grad:
        raise ValueError("no LoRA weight has a gradient: run the backward first")
    out = torch.zeros(1, projector.dims)
    for name, grad in with_grad.items():
        projector.add(rename(name), grad.unsqueeze(0), out)
    return out[0]


def example_gradients(
    model: nn.Module,
    projector: Projector,
    batches: Iterable[Any],
    per_example_loss: Callable[[nn.Module, Any], torch.Tensor],
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """(examples, dims): each example's projected gradient of its own loss, one batched backward per batch.

    `per_example_loss(model, batch)` returns a (batch,) tensor. Dropout is off (eval mode); weights are
    untouched (gradients are cleared after each batch). Attribution uses this for query gradients, the factory
    for the final index pass, so both are projected identically.
    """
    was_training = model.training
    model.eval()
    rows: list[torch.Tensor] = []
    with GradCapture(model, projector) as capture:
        for batch in batches:
            capture.begin()
            losses = per_example_loss(model, batch)
            losses.sum().backward()
            rows.append(capture.result())
            model.zero_grad(set_to_none=True)
            if progress:
                progress(sum(r.shape[0] for r in rows))
    model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, projector.dims)
