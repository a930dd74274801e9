"""The PEFT directory on disk, without torch: file names, the existence checks and the content hash (the adapter id).

Kept free of torch so the CLI can register adapters without paying for the import.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from pathlib import Path

from tally.engine.errors import AdapterValidationError

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"


def check_directory(name: str, path: Path) -> None:
    """Fail early, with the adapter's name, when the directory is not a usable PEFT LoRA directory."""
    if not path.is_dir():
        raise AdapterValidationError(f"adapter {name!r}: {path} is not a directory")
    if not (path / CONFIG_FILE).is_file():
        raise AdapterValidationError(f"adapter {name!r}: {path} has no {CONFIG_FILE}")
    if not (path / WEIGHTS_FILE).is_file():
        extra = (
            " (only pickled adapter_model.bin found; it is never unpickled)"
            if (path / "adapter_model.bin").exists()
            else ""
        )
        raise AdapterValidationError(f"adapter {name!r}: {path} has no {WEIGHTS_FILE}{extra}")


def hash_adapter(path: Path) -> str:
    """SHA-256 over the config bytes and the weights bytes (the weights read through a memory map)."""
    h = hashlib.sha256()
    cfg = (path / CONFIG_FILE).read_bytes()
    h.update(len(cfg).to_bytes(8, "little"))
    h.update(cfg)
    with (path / WEIGHTS_FILE).open("rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                h.update(mm)
    return h.hexdigest()
