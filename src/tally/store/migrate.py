"""Alembic migrations, run programmatically (no alembic.ini needed by users).

Every command opens the store and so asks whether the schema is current. Importing alembic costs about a fifth
of a second, so that question is first answered without it: the head is read from the migration files'
`revision` / `down_revision` lines and compared with the database's `alembic_version` row. Anything that simple
reading cannot settle (a merge, a file written differently, no version table) goes to alembic as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tally.store.db import Store

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_ASSIGNMENT = re.compile(r"""^(revision|down_revision)\s*(?::[^=\n]*)?=\s*(None|"[^"\n]*"|'[^'\n]*')\s*$""", re.M)


def alembic_config(store: Store) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", store.url.replace("%", "%%"))
    config.attributes["engine"] = store.engine
    return config


def current_revision(store: Store) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with store.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def head_from_files() -> str | None:
    """The single head of the migration chain read from the files' text, or None when that reading is unsure."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in (MIGRATIONS_DIR / "versions").glob("*.py"):
        found = {name: value for name, value in _ASSIGNMENT.findall(path.read_text(encoding="utf-8"))}
        if set(found) != {"revision", "down_revision"} or found["revision"] == "None":
            return None
        revisions.add(found["revision"][1:-1])
        if found["down_revision"] != "None":
            parents.add(found["down_revision"][1:-1])
    heads = revisions - parents
    return heads.pop() if len(heads) == 1 and parents <= revisions else None


def is_current(store: Store) -> bool:
    """Whether the database is at the head revision, decided without alembic; False when unsure."""
    head = head_from_files()
    if head is None:
        return False
    try:
        with store.engine.connect() as conn:
            versions = list(conn.execute(text("SELECT version_num FROM alembic_version")).scalars())
    except DBAPIError:  # no version table yet: a new database
        return False
    return versions == [head]


def upgrade(store: Store, revision: str = "head") -> None:
    if revision == "head" and (is_current(store) or current_revision(store) == head_revision()):
        return
    from alembic import command

    command.upgrade(alembic_config(store), revision)
