"""A small, exactly resumable LoRA training loop (torch + PEFT) with eval, early stopping and gradient capture.

Our own loop rather than HF Trainer because resume must be exact: the data order of each epoch is a pure
function of (seed, epoch), the learning rate a pure function of the step, and the only other randomness
(dropout) comes from the global torch RNG, whose state every checkpoint stores. So a run resumed from step k
performs the same floating-point operations as an uninterrupted one and ends with identical weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tally.factory.checkpoint import TrainState, latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from tally.factory.config import TrainConfig
from tally.factory.encode import Encoded, collate, length_groups, mean_token_loss, token_losses
from tally.factory.errors import FactoryError
from tally.factory.trainlog import TrainLog
from tally.influence import GradCapture, Projector


@dataclass
class LoopResult:
    steps: int
    tokens: int
    train_loss: float | None
    eval_loss: float | None
    best_eval_loss: float | None
    stopped_early: bool
    seconds: float
    influence: dict[str, torch.Tensor] = field(default_factory=dict)  # epoch_N -> (examples, dims)
    influence_lr: dict[str, float] = field(default_factory=dict)
    # epoch_N -> parameter -> its value when epoch N started
    influence_weights: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate for optimizer step `step` (0-based): linear warmup, then constant, linear or cosine decay."""
    t = cfg.train
    warm = int(total * t.warmup_ratio)
    if step < warm:
        return t.lr * (step + 1) / warm
    if t.schedule == "constant":
        return t.lr
    frac = (step - warm) / max(1, total - warm)
    return t.lr * (1 - frac if t.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac)))


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def eval_loss(model: Any, items: list[Encoded], batch_size: int, pad: int) -> float | None:
    """Mean next-token loss over the targets of `items` (no dropout)."""
    if not items:
        return None
    was_training = model.training
    model.eval()
    loss = mean_token_loss(model, items, pad, batch_size)
    model.train(was_training)
    return loss


class Loop:
    def __init__(
        self,
        cfg: TrainConfig,
        model: Any,
        train: list[Encoded],
        evals: list[Encoded],
        pad: int,
        out: Path,
        log: TrainLog,
    ) -> None:
        if not train:
            raise FactoryError("no training rows left after the eval split")
        self.cfg, self.model, self.train, self.evals, self.pad, self.out, self.log = (
            cfg, model, train, evals, pad, out, log,
        )  # fmt: skip
        t = cfg.train
        self.per_step = t.batch_size * t.grad_accum
        self.steps_per_epoch = math.ceil(len(train) / self.per_step)
        self.total = min(t.epochs * self.steps_per_epoch, t.max_steps or 1 << 62)
        params = [p for p in model.parameters() if p.requires_grad]
        self.opt: torch.optim.Optimizer = (
            torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
            if t.optimizer == "adamw"
            else torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
        )
        self.projector = Projector.for_model(model, cfg.influence.dims, cfg.influence.seed)
        self.capture_epochs = cfg.influence.enabled and cfg.influence.per_epoch
        self.state = TrainState()

    def resume(self) -> int:
        """Restore the latest checkpoint, if any; returns the step to continue from."""
        ckpt = latest_checkpoint(self.out)
        if ckpt is None:
            return 0
        self.state = load_checkpoint(ckpt, self.model, self.opt)
        self.log.truncate(self.state.log_lines)
        self.log.emit({"type": "resumed", "step": self.state.step, "checkpoint": ckpt.name})
        return self.state.step

    def _eval(self, step: int) -> bool:
        """Eval loss, best-model tracking and early stopping; True when training should stop."""
        loss = eval_loss(self.model, self.evals, self.cfg.train.batch_size, self.pad)
        if loss is None:
            return False
        self.log.emit({"type": "eval", "step": step, "eval_loss": loss})
        best = self.state.best_eval
        if best is None or loss < best - self.cfg.eval.min_delta:
            self.state.best_eval, self.state.bad_evals = loss, 0
            for n, p in self.model.named_parameters():
                if p.requires_grad:
                    self.state.best_weights[n] = p.detach().clone()
            return False
        self.state.bad_evals += 1
        patience = self.cfg.eval.early_stopping_patience
        return patience is not None and self.state.bad_evals >= patience

    def _step(self, step: int, capture: GradCapture) -> tuple[float, int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        order = epoch_order(len(self.train), self.cfg.train.seed, epoch)
        idx = order[k * self.per_step : (k + 1) * self.per_step]
        # the step's rows in batches of at most batch_size, grouped by length (the same sum, less padding)
        lengths = [len(self.train[i].input_ids) for i in idx]
        chunks = [[idx[j] for j in group] for group in length_groups(lengths, self.cfg.train.batch_size)]
        targets = sum(self.train[i].target_tokens for i in idx)
        loss_total, tokens = 0.0, 0
        grads = self.state.epoch_grads
        if self.capture_epochs and epoch + 1 not in grads:
            grads[epoch + 1] = torch.zeros(len(self.train), self.projector.dims, dtype=torch.float16)
        for chunk in chunks:
            batch = collate([self.train[i] for i in chunk], self.pad)
            if self.capture_epochs:
                counts = torch.tensor([max(1, self.train[i].target_tokens) for i in chunk], dtype=torch.float32)
                capture.begin(len(chunk), targets / counts)
            sums, _ = token_losses(self.model, batch)
            loss = sums.sum() / max(1, targets)
            loss.backward()
            if self.capture_epochs:
                grads[epoch + 1][chunk] = capture.result().to(torch.float16)
            loss_total += float(loss.detach())
            tokens += int(batch["attention_mask"].sum())
        if self.cfg.train.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.train.max_grad_norm
            )
        lr = lr_at(self.cfg, step, self.total)
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_total, tokens

    def _checkpoint(self, step: int) -> None:
        self.state.log_lines = self.log.lines()
        path = save_checkpoint(self.out, self.model, self.opt, self.state)
        prune_checkpoints(self.out, self.cfg.train.keep_checkpoints)
        self.log.emit({"type": "checkpoint", "step": step, "path": path.name})

    def run(
        self, resume: bool = False, stop_after: int | None = None, should_stop: Callable[[], bool] | None = None
    ) -> LoopResult:
        """Train to the end (or `stop_after` steps, to simulate an interruption in tests). `should_stop` is asked
        after every step: True ends the run there with a checkpoint of that step (a worker that is shutting down),
        from which a resume continues exactly."""
        step = self.resume() if resume else 0
        if step == 0:
            self.log.reset()
            torch.manual_seed(self.cfg.train.seed)
        every = self.cfg.eval.every_steps
        save = self.cfg.train.save_steps
        start, start_step, last_loss = time.monotonic(), step, None
        self.model.train()
        with GradCapture(self.model, self.projector) as capture:
            while step < self.total and not self.state.stopped_early:
                epoch = step // self.steps_per_epoch + 1
                if self.capture_epochs and epoch not in self.state.epoch_weights:
                    # the weights this epoch starts from (epoch 1: the initial adapter): its rows' gradients are
                    # taken on the way from them, so TracIn takes the query's gradient there
                    trained = (item for item in self.model.named_parameters() if item[1].requires_grad)
                    self.state.epoch_weights[epoch] = {n: p.detach().to(torch.float16).clone() for n, p in trained}
                loss, tokens = self._step(step, capture)
                step += 1
                self.state.step = step
                self.state.tokens += tokens
                last_loss = loss
                elapsed = time.monotonic() - start
                rate = (step - start_step) / elapsed if elapsed else 0.0
                self.log.emit({
                    "type": "train", "step": step, "total_steps": self.total, "epoch": step / self.steps_per_epoch,
                    "loss": loss, "lr": lr_at(self.cfg, step - 1, self.total), "tokens": self.state.tokens,
                    "tokens_per_s": self.state.tokens / elapsed if elapsed else 0.0, "elapsed_s": elapsed,
                    "eta_s": (self.total - step) / rate if rate else None,
                })  # fmt: skip
                epoch_end = step % self.steps_per_epoch == 0 or step == self.total
                if ((every and step % every == 0) or (not every and epoch_end)) and self._eval(step):
                    self.state.stopped_early = True
                    self.log.emit({"type": "early_stop", "step": step, "best_eval_loss": self.state.best_eval})
                saved = epoch_end or bool(save and step % save == 0) or self.state.stopped_early
                if saved:
                    self._checkpoint(step)
                if stop_after is not None and step >= stop_after:
                    break
                if should_stop is not None and step < self.total and should_stop():
                    if not saved:
                        self._checkpoint(step)
                    self.log.emit({"type": "paused", "step": step})
                    break
        return self._finish(step, last_loss, time.monotonic() - start)

    def _finish(self, step: int, last_loss: float | None, seconds: float) -> LoopResult:
        if self.state.stopped_early and self.state.best_weights:
            params = dict(self.model.named_parameters())
            with torch.no_grad():
                for name, value in self.state.best_weights.items():
                    params[name].copy_(value)
        # an epoch's gradients are taken at the learning rate of its last step (TracIn weighs them by it)
        epochs = sorted(self.state.epoch_grads)  # in epoch order, however many came from a checkpoint
        infl = {f"epoch_{e}": self.state.epoch_grads[e] for e in epochs}
        lrs = {f"epoch_{e}": lr_at(self.cfg, min(e * self.steps_per_epoch, self.total) - 1, self.total) for e in epochs}
        final_eval = eval_loss(self.model, self.evals, self.cfg.train.batch_size, self.pad)
        weights = {f"epoch_{e}": self.state.epoch_weights[e] for e in epochs if e in self.state.epoch_weights}
        return LoopResult(
            step, self.state.tokens, last_loss, final_eval, self.state.best_eval, self.state.stopped_early,
            seconds, infl, lrs, weights,
        )  # fmt: skip
