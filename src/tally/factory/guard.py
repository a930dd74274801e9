"""What a fine-tuning job may ask for, and which adapter names and directories it may take.

A job submitted through the API comes from someone else's key, so the server decides where its files go (never
`output.dir`), which model it starts from (a model the server knows by name, never a filesystem path) and how big
it may be (the `factory` settings). The CLI is the operator's own door and keeps paths. Whatever the door, an
adapter name belongs to the developer who first trained it, and an existing adapter directory is never written
into: see docs/security.md.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from tally.config import Settings
from tally.config.settings import FactoryLimits
from tally.factory.config import TrainConfig
from tally.factory.errors import FactoryError
from tally.factory.tables import AdapterRow
from tally.identity import Principal
from tally.models import REGISTRY, known_names


def check_api_config(settings: Settings, cfg: TrainConfig) -> None:
    """Refuse what only the operator may choose, then anything above the server's training limits."""
    if cfg.output.dir is not None:
        raise FactoryError(
            "output.dir cannot be set through the API: the server keeps adapters under its data directory, "
            "in a folder per developer",
            param="output.dir",
        )
    name = cfg.model.name
    if name != settings.models.default and name not in REGISTRY:
        known = sorted({settings.models.default, *known_names()})
        raise FactoryError(
            f"model.name must name a model this server knows ({', '.join(known)}), not a path",
            param="model.name",
            model=name,
        )
    check_limits(settings.factory, cfg)


def check_limits(limits: FactoryLimits, cfg: TrainConfig) -> None:
    asked = {
        "train.epochs": (cfg.train.epochs, limits.max_epochs),
        "train.batch_size": (cfg.train.batch_size, limits.max_batch_size),
        "data.max_length": (cfg.data.max_length, limits.max_length),
        "influence.dims": (cfg.influence.dims, limits.max_influence_dims),
    }
    for field, (value, limit) in asked.items():
        if value > limit:
            raise FactoryError(
                f"{field} is {value}; this server allows at most {limit}",
                kind="limit", param=field, value=value, limit=limit,
            )  # fmt: skip


def check_rows(limits: FactoryLimits, rows: int) -> None:
    if rows > limits.max_rows:
        raise FactoryError(
            f"the job's snapshots hold {rows} rows; this server trains on at most {limits.max_rows} per job",
            kind="limit", param="data.datanets", value=rows, limit=limits.max_rows,
        )  # fmt: skip


def check_name(session: Session, principal: Principal, name: str) -> None:
    """An adapter name is its first developer's: another developer training or publishing it is a conflict."""
    owners = session.execute(select(AdapterRow.created_by).where(AdapterRow.name == name).distinct()).scalars()
    others = sorted(set(owners) - {principal.address})
    if others:
        raise FactoryError(
            f"the adapter name {name!r} belongs to another developer ({others[0]}); choose another output.name",
            kind="conflict", param="output.name", name=name,
        )  # fmt: skip


def check_free(settings: Settings, directory: Path, name: str) -> None:
    """An adapter directory that exists (and is not empty) is never written into or replaced."""
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise FactoryError(
            f"adapter {name!r} already exists ({shown(settings, directory)}); an adapter is never overwritten: "
            "choose another output.name",
            kind="conflict", param="output.name", name=name,
        )  # fmt: skip


def shown(settings: Settings, directory: Path) -> str:
    """A directory as a caller may see it: relative to the data directory, whose place is the server's business."""
    try:
        return f"<data_dir>/{directory.resolve().relative_to(settings.data_dir.resolve()).as_posix()}"
    except ValueError:
        return str(directory)  # outside the data directory: only the operator's CLI can put it there
