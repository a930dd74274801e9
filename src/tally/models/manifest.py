"""The manifest that marks a cached model directory as complete.

It is written last, so its presence (with every listed file there at its recorded size) means the pull
finished; a directory without one is a leftover and is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tally.models.registry import ModelSource

MANIFEST_NAME = "tally-model.json"
MANIFEST_FORMAT = 1
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(model_dir: Path, source: ModelSource, extra: dict[str, Any] | None = None) -> Path:
    """Hash every file in `model_dir` and write the manifest, fsynced, as the last file."""
    files = [
        {"path": p.relative_to(model_dir).as_posix(), "size": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(model_dir.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    ]
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": source.name,
        "source": asdict(source),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **(extra or {}),
        "files": files,
    }
    path = model_dir / MANIFEST_NAME
    with path.open("w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path


def read_manifest(model_dir: Path) -> dict[str, Any] | None:
    """The manifest if `model_dir` is complete (every listed file present at its size), else None.

    Sizes, not hashes, are checked: this runs on every resolve and must stay cheap.
    """
    try:
        manifest = json.loads((model_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = manifest["files"]
        for entry in files:
            if (model_dir / entry["path"]).stat().st_size != entry["size"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if manifest.get("format") != MANIFEST_FORMAT or not files:
        return None
    return manifest


def is_complete(model_dir: Path) -> bool:
    return read_manifest(model_dir) is not None


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
