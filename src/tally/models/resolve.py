"""Finding a model directory from a name or a path, and listing the known models' cache status."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tally.models.errors import ModelNotPulledError, UnknownModelError
from tally.models.manifest import dir_size, read_manifest
from tally.models.registry import REGISTRY, ModelSource, get_source, known_names


@dataclass(frozen=True)
class ModelStatus:
    source: ModelSource
    path: Path
    pulled: bool
    size_bytes: int | None  # on disk, when pulled

    @property
    def name(self) -> str:
        return self.source.name


def is_model_dir(path: Path) -> bool:
    """A Hugging Face model directory: what `from_pretrained` can load from, marked by its config.json."""
    return (path / "config.json").is_file()


def resolve_model(name_or_path: str | Path, cache_dir: Path | str) -> Path:
    """The directory to load for `name_or_path`.

    A local model directory is used as it is; a known name maps to its cache directory, which must have been
    pulled completely. Anything else is an error that says what would work.
    """
    candidate = Path(name_or_path).expanduser()
    if is_model_dir(candidate):
        return candidate.resolve()
    text = str(name_or_path)
    if text in REGISTRY:
        path = Path(cache_dir).expanduser() / text
        if read_manifest(path) is None:
            raise ModelNotPulledError(
                f"Model {text!r} has not been pulled into {Path(cache_dir).expanduser()} yet (or the pull did "
                f"not finish): run `tally models pull {text}`."
            )
        return path.resolve()
    if candidate.is_dir():
        raise UnknownModelError(f"{candidate} is a directory but not a model directory: it has no config.json.")
    if isinstance(name_or_path, Path) or "/" in text or text.startswith(("~", ".")):
        raise UnknownModelError(f"No model directory at {candidate}. Known model names: {', '.join(known_names())}.")
    get_source(text)  # raises UnknownModelError listing the known names
    raise AssertionError("unreachable")  # pragma: no cover


def list_models(cache_dir: Path | str) -> list[ModelStatus]:
    """Every known model, whether it is pulled into `cache_dir`, where, and how large it is."""
    cache = Path(cache_dir).expanduser()
    statuses = []
    for name in known_names():
        path = cache / name
        pulled = read_manifest(path) is not None
        statuses.append(ModelStatus(REGISTRY[name], path, pulled, dir_size(path) if pulled else None))
    return statuses
