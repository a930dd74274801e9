"""What a trained adapter carries about its origin: hashes, a manifest, a model card, the registry entry.

The manifest (typed in `tally.engine.manifest`, which attribution reads too) binds the adapter's bytes to the base
model's bytes, the exact snapshot roots, the config and the results; its hash goes into the
`factory.adapter_trained` ledger entry, so anyone holding the directory can check it against the public log. The
model card is the Hugging Face kind (`library_name: peft`, `base_model`, `datasets`, `license`) with contributors
and their row counts.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import yaml

from tally.engine.manifest import MANIFEST_NAME, AdapterManifest, Evaluation, manifest_text
from tally.engine.registry import add as registry_add
from tally.engine.registry import registry_path
from tally.models.manifest import MANIFEST_NAME as MODEL_MANIFEST_NAME
from tally.models.manifest import sha256_file

CARD_NAME = "README.md"


def stabilise_adapter_config(directory: Path) -> None:
    """PEFT writes `target_modules` (a set) in hash-seed order, so identical training would give a different
    adapter_config.json, and so a different adapter id, in every process. Sort it, keeping PEFT's formatting."""
    path = directory / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        path.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")


def base_model_hash(model_dir: Path) -> str:
    """SHA-256 of the sorted (path, sha256) list of the model's files: from its pull manifest when it has one."""
    manifest = model_dir / MODEL_MANIFEST_NAME
    if manifest.is_file():
        files = {f["path"]: f["sha256"] for f in json.loads(manifest.read_text()).get("files", [])}
    else:
        files = {
            p.name: sha256_file(p)
            for p in sorted(model_dir.iterdir())
            if p.is_file() and p.suffix in {".json", ".safetensors", ".jinja", ".model"}
        }
    return hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()


def directory_hash(directory: Path) -> str | None:
    if not directory.is_dir():
        return None
    files = sorted((p.relative_to(directory).as_posix(), sha256_file(p)) for p in directory.rglob("*") if p.is_file())
    return hashlib.sha256(json.dumps(files).encode()).hexdigest()


def write_manifest(out_dir: Path, manifest: AdapterManifest) -> str:
    """Write manifest.json (canonical: sorted keys) and return its SHA-256."""
    text = manifest_text(manifest)
    (out_dir / MANIFEST_NAME).write_text(text, encoding="utf-8")
    return hashlib.sha256(text.encode()).hexdigest()


def _hf_license(licenses: list[str]) -> str:
    unique = sorted(set(licenses))
    if len(unique) == 1 and " " not in unique[0]:
        return unique[0].lower()
    return "other"


def model_card(manifest: AdapterManifest, evals: list[Evaluation] | None = None) -> str:
    """A Hugging Face model card with YAML front matter, built from the manifest and recorded evaluations (each
    also a `factory.evaluated` entry)."""
    evals = evals or []
    snaps = manifest.data.snapshots
    licenses = [s.license for s in snaps]
    front = {
        "library_name": "peft",
        "base_model": manifest.base_model.name,
        "license": _hf_license(licenses),
        "datasets": [f"tally:{s.datanet}@{s.snapshot}" for s in snaps],
        "tags": ["lora", "tally", "peft"],
        "model-index": [
            {
                "name": manifest.adapter.name,
                "results": [
                    {
                        "task": {"type": "text-generation"},
                        "dataset": {"name": e.datanet, "type": f"tally:{e.datanet}@{e.snapshot}"},
                        "metrics": [{"type": k, "value": round(float(v), 6)} for k, v in sorted(e.metrics.items())],
                    }
                    for e in evals
                ],
            }
        ],
    }
    contributors = sorted(manifest.data.contributors.items(), key=lambda kv: (-kv[1], kv[0]))
    hp = manifest.config
    rows = "\n".join(f"| `{a}` | {n} |" for a, n in contributors)
    snap_rows = "\n".join(f"| {s.datanet} | `{s.snapshot}` | v{s.version} | {s.rows} | {s.license} |" for s in snaps)
    metrics = "\n".join(
        f"| {k} | {v:.4g} |" for k, v in sorted(manifest.metrics.model_dump().items()) if isinstance(v, float)
    )
    eval_rows = "\n".join(
        f"| {e.datanet}@{e.snapshot[:12]} | {e.examples} | "
        + " | ".join(f"{e.metrics.get(k, float('nan')):.4g}" for k in ("exact_match", "token_f1", "loss"))
        + f" | {e.ledger_seq} |"
        for e in evals
    )
    evaluation = (
        "\n## Evaluation\n\n| data | rows | exact match | token F1 | loss | ledger entry |\n|---|---|---|---|---|---|\n"
        + eval_rows + "\n"
        if evals
        else ""
    )  # fmt: skip
    index_hash = manifest.influence.hash if manifest.influence else None
    return f"""---
{yaml.safe_dump(front, sort_keys=False).strip()}
---

# {manifest.adapter.name}

A LoRA adapter for `{manifest.base_model.name}` trained by Tally's factory on datanet snapshots. Every
number below is in `manifest.json`, whose SHA-256 is recorded in the Tally ledger (`factory.adapter_trained`).

## Training data

| datanet | snapshot (Merkle root) | version | rows used | license (SPDX) |
|---|---|---|---|---|
{snap_rows}

Rows: {manifest.data.train_rows} trained on, {manifest.data.eval_rows} held out for eval loss.

## Contributors

| address | rows |
|---|---|
{rows}

## Hyperparameters

- method: LoRA r={hp["method"]["rank"]}, alpha={hp["method"]["alpha"]}, dropout={hp["method"]["dropout"]},
  targets {", ".join(hp["method"]["targets"])}
- optimizer {hp["train"]["optimizer"]}, lr {hp["train"]["lr"]} ({hp["train"]["schedule"]}, warmup
  {hp["train"]["warmup_ratio"]}), batch {hp["train"]["batch_size"]} x accumulation {hp["train"]["grad_accum"]},
  epochs {hp["train"]["epochs"]}, seed {hp["train"]["seed"]}, max length {hp["data"]["max_length"]}
- prompt tokens are masked from the loss (the tokenizer's chat template)

## Results

| metric | value |
|---|---|
{metrics}
{evaluation}
## Hashes

- adapter: `{manifest.adapter.hash}`
- base model: `{manifest.base_model.hash}`
- config: `{manifest.config_hash}`
- training-data index: `{index_hash}`
"""


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` whole: a temporary file beside it, synced, renamed over it (a crash leaves the old or the new
    file, never half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def publish(data_dir: Path, name: str, adapter_dir: Path) -> dict[str, Any]:
    """Register the adapter in `<data_dir>/adapters.json`, the file the engine reads (the engine's own format)."""
    entry = registry_add(registry_path(data_dir), name, adapter_dir)
    return {"name": entry.name, "path": entry.path, "adapter_id": entry.adapter_id}
