"""Pipeline files: a YAML DAG of steps (snapshot, train, eval, gate, publish, deploy), validated up front.

```yaml
name: people
retries: 1                    # default for every step
steps:
  data:    {kind: snapshot, datanet: people}
  train:   {kind: train, needs: [data], config: train.yaml}      # or an inline mapping
  eval:    {kind: eval, needs: [train], datanets: [people-paraphrases], include_base: false}
  gate:    {kind: gate, needs: [eval], require: {exact_match: ">= 0.8"}}
  publish: {kind: publish, needs: [gate, train]}
  deploy:  {kind: deploy, needs: [publish], url: http://127.0.0.1:8000}   # url optional
```
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from tally.config.yaml_errors import read_yaml, validate
from tally.factory.errors import FactoryError

KINDS = ("snapshot", "train", "eval", "gate", "publish", "deploy")
_CONDITION = re.compile(r"^\s*(>=|<=|>|<|==)\s*(-?[0-9.eE+-]+)\s*$")


class StepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["snapshot", "train", "eval", "gate", "publish", "deploy"]
    needs: list[str] = Field(default_factory=list)
    retries: int | None = Field(None, ge=0, le=10)
    datanet: str | None = None  # snapshot
    create: bool = False  # snapshot: freeze the accepted rows first (needs the owner)
    config: dict[str, Any] | str | None = None  # train: a mapping or a path relative to the pipeline file
    datanets: list[str] = Field(default_factory=list)  # eval: extra eval datanets (`slug` or `slug@snapshot`)
    include_base: bool = False  # eval
    require: dict[str, str] = Field(default_factory=dict)  # gate: metric -> ">= 0.8"
    name: str | None = None  # publish: registry name (default: the adapter's name)
    url: str | None = None  # deploy: a running Tally server to load the adapter into


class PipelineSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
    retries: int = Field(0, ge=0, le=10)
    retry_delay_s: float = Field(0.0, ge=0)
    steps: dict[str, StepSpec] = Field(min_length=1)

    def order(self) -> list[str]:
        """Steps in dependency order (ties by name), or FactoryError naming an unknown need or a cycle."""
        for name, step in self.steps.items():
            for need in step.needs:
                if need not in self.steps:
                    raise FactoryError(f"step {name!r} needs {need!r}, which is not a step of this pipeline")
        done: list[str] = []
        while len(done) < len(self.steps):
            ready = sorted(n for n, s in self.steps.items() if n not in done and all(d in done for d in s.needs))
            if not ready:
                stuck = sorted(set(self.steps) - set(done))
                raise FactoryError(f"the steps {', '.join(stuck)} depend on each other in a cycle")
            done.append(ready[0])
        return done


def parse_condition(text: str) -> tuple[str, float]:
    m = _CONDITION.match(text)
    if not m:
        raise FactoryError(f"gate condition {text!r} must look like '>= 0.8' (operators >=, <=, >, <, ==)")
    return m.group(1), float(m.group(2))


def check(spec: PipelineSpec) -> PipelineSpec:
    spec.order()
    for name, step in spec.steps.items():
        if step.kind == "snapshot" and not step.datanet:
            raise FactoryError(f"step {name!r}: a snapshot step needs datanet")
        if step.kind == "train" and step.config is None:
            raise FactoryError(f"step {name!r}: a train step needs config (a mapping or a YAML file)")
        if step.kind == "gate":
            if not step.require:
                raise FactoryError(f"step {name!r}: a gate needs require (metric: condition)")
            for cond in step.require.values():
                parse_condition(cond)
    return spec


def load_pipeline(path: Path) -> tuple[PipelineSpec, Path]:
    """The validated spec and the directory that relative config paths are resolved against."""
    raw, text = read_yaml(path, FactoryError, "pipeline file")
    return check(validate(PipelineSpec, raw, str(path), FactoryError, text)), path.parent
