"""The adapter registry file: name -> PEFT directory, written by `tally adapters add`, read by the engine at start.

JSON in the data directory (`adapters.json`), replaced atomically on every change. Torch-free.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tally.engine.errors import AdapterNotFoundError, AdapterValidationError
from tally.engine.files import CONFIG_FILE, check_directory, hash_adapter

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}$")


@dataclass(frozen=True)
class RegistryEntry:
    name: str
    path: str
    adapter_id: str  # content hash when added; the engine hashes again on load
    pinned: bool = False
    added: int = 0


def registry_path(data_dir: Path | str) -> Path:
    return Path(data_dir) / "adapters.json"


def read_registry(path: Path) -> dict[str, RegistryEntry]:
    if not path.is_file():
        return {}
    raw = json.loads(path.read_text())
    return {
        name: RegistryEntry(name=name, **{k: v for k, v in e.items() if k != "name"})
        for name, e in raw.get("adapters", {}).items()
    }


def _write(path: Path, entries: dict[str, RegistryEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"adapters": {n: {k: v for k, v in asdict(e).items() if k != "name"} for n, e in sorted(entries.items())}}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".adapters-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def add(path: Path, name: str, adapter_dir: Path | str, pinned: bool = False) -> RegistryEntry:
    """Register `name` (or re-point it); checks the directory and config, records the content hash."""
    if not _NAME.match(name):
        raise AdapterValidationError(f"adapter name {name!r} must be 1-200 characters of letters, digits and ._:/-")
    directory = Path(adapter_dir).expanduser().resolve()
    check_directory(name, directory)
    try:
        cfg = json.loads((directory / CONFIG_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise AdapterValidationError(f"adapter {name!r}: {CONFIG_FILE} is not valid JSON: {exc}") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterValidationError(f"adapter {name!r}: {CONFIG_FILE} does not describe a LoRA adapter")
    entries = read_registry(path)
    entry = RegistryEntry(name, str(directory), hash_adapter(directory), pinned, int(time.time()))
    entries[name] = entry
    _write(path, entries)
    return entry


def remove(path: Path, name: str) -> RegistryEntry:
    entries = read_registry(path)
    if name not in entries:
        raise AdapterNotFoundError(f"adapter {name!r} is not registered")
    entry = entries.pop(name)
    _write(path, entries)
    return entry
