"""The training config: a YAML file with sections model / method / data / train / eval / output / influence.

Modelled on LLaMA-Factory's configs so its users feel at home; unknown keys are errors (a typo must not silently
fall back to a default), and every field has a default except the data sources and the output name.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tally.config.yaml_errors import read_yaml, validate
from tally.factory.errors import FactoryError

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Schema bounds, far above any sensible run: an absurd integer is a 400 naming the field, never an overflow deep in
# torch. What a server accepts from API users is capped much lower by the `factory` settings (FactoryLimits).
_BIG = 1 << 30
SEED_MAX = (1 << 32) - 1


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelCfg(_Section):
    name: str = "smollm2-135m-instruct"  # a known model name or a local Hugging Face model directory


class MethodCfg(_Section):
    type: Literal["lora"] = "lora"
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    targets: list[str] = Field(default_factory=lambda: list(ALL_PROJECTIONS))


class SourceCfg(_Section):
    datanet: str
    snapshot: str = "latest"  # id (prefix), vN or latest


class DataCfg(_Section):
    datanets: list[SourceCfg] = Field(min_length=1)
    eval_fraction: float = Field(0.0, ge=0, lt=1, description="rows held out (by hash, seeded) for eval loss")
    max_length: int = Field(512, ge=8, le=_BIG)
    commercial: bool = Field(False, description="the adapter will be used commercially: needs the commercial use too")


class TrainCfg(_Section):
    epochs: int = Field(3, ge=1, le=_BIG)
    max_steps: int | None = Field(None, ge=1, le=_BIG, description="stop after this many optimizer steps")
    batch_size: int = Field(16, ge=1, le=_BIG)
    grad_accum: int = Field(1, ge=1, le=_BIG)
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["constant", "linear", "cosine"] = "linear"
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = Field(0, ge=0, le=SEED_MAX)
    save_steps: int | None = Field(
        None, ge=1, le=_BIG, description="checkpoint every N steps (and always at epoch ends)"
    )
    keep_checkpoints: int = Field(2, ge=1, le=_BIG, description="newest checkpoints kept on disk (resume needs one)")


class EvalCfg(_Section):
    every_steps: int | None = Field(None, ge=1, le=_BIG, description="eval-loss interval; default: at each epoch end")
    early_stopping_patience: int | None = Field(
        None, ge=1, le=_BIG, description="evals without improvement before stopping"
    )
    min_delta: float = Field(0.0, ge=0)


class InfluenceCfg(_Section):
    enabled: bool = True
    dims: int = Field(4096, ge=16, le=_BIG, description="projected dimensions in all, split over the layers")
    seed: int = Field(0, ge=0, le=SEED_MAX)
    per_epoch: bool = Field(True, description="also store gradients captured in each epoch (TracIn checkpoints)")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="matrix products of the final index pass: bf16 autocast (auto: where the CPU has native bf16, "
        "AVX-512 BF16 or AMX), else fp32",
    )


class OutputCfg(_Section):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    dir: Path | None = None  # default: <data_dir>/adapters/<developer address>/<name>; refused from the API
    publish: bool = False


class TrainConfig(_Section):
    model: ModelCfg = Field(default_factory=ModelCfg)
    method: MethodCfg = Field(default_factory=MethodCfg)
    data: DataCfg
    train: TrainCfg = Field(default_factory=TrainCfg)
    eval: EvalCfg = Field(default_factory=EvalCfg)
    influence: InfluenceCfg = Field(default_factory=InfluenceCfg)
    output: OutputCfg

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the full config (defaults included): what the manifest records."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def parse_config(raw: dict[str, Any], source: str = "config", *, text: str | None = None) -> TrainConfig:
    """A validated config, or FactoryError naming the field (`train.lr`), its line when known, and what was wrong."""
    return validate(TrainConfig, raw, source, FactoryError, text)


def load_config(path: Path | str) -> TrainConfig:
    path = Path(path)
    raw, text = read_yaml(path, FactoryError, "config file")
    if not isinstance(raw, dict):
        raise FactoryError(f"{path}: expected a mapping with sections model, method, data, train, eval, output")
    return parse_config(raw, str(path), text=text)
