"""Training events: one JSON line each in `trainer_log.jsonl`, fanned out to listeners (CLI bar, API stream).

The file is the source of truth: the API's event stream tails it, and a resumed run truncates it back to the
checkpoint it resumes from, so the log of a resumed run reads like that of an uninterrupted one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

LOG_NAME = "trainer_log.jsonl"
Listener = Callable[[dict[str, Any]], None]


def read_log(path: Path) -> list[dict[str, Any]]:
    """The events written so far (a partly written last line, from a run in progress, is left for later)."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return events


class TrainLog:
    def __init__(self, path: Path, listeners: list[Listener] | None = None) -> None:
        self.path, self.listeners = path, list(listeners or [])
        path.parent.mkdir(parents=True, exist_ok=True)

    def lines(self) -> int:
        return len(self.read()) if self.path.exists() else 0

    def read(self) -> list[dict[str, Any]]:
        return read_log(self.path)

    def truncate(self, keep: int) -> None:
        kept = self.read()[:keep]
        self.path.write_text("".join(json.dumps(e) + "\n" for e in kept))

    def reset(self) -> None:
        self.path.write_text("")

    def emit(self, event: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(event) + "\n")
        for listener in self.listeners:
            listener(event)


def plot_loss(log_path: Path, png: Path) -> Path | None:
    """Training and eval loss against steps (matplotlib, Agg: no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    events = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    train = [(e["step"], e["loss"]) for e in events if e.get("type") == "train"]
    evals = [(e["step"], e["eval_loss"]) for e in events if e.get("type") == "eval"]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), marker="o", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png
