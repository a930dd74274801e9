"""Commands that need no model start fast: importing the CLI, and running them, loads none of the heavy libraries.

Checked by the modules a fresh interpreter holds afterwards, not by timing, so the test cannot be flaky.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Each costs from a quarter of a second (eth_utils) to several seconds (torch, transformers) to import.
HEAVY = (
    "torch",
    "transformers",
    "sentence_transformers",
    "peft",
    "eth_account",
    "eth_utils",
    "datasketch",
    "scipy",
    "fastapi",
)

_PROBE = """
import json, sys
argv = sys.argv[1:]
import tally.cli.main
if argv:
    sys.argv = ["tally", *argv]
    try:
        tally.cli.main.app()
    except SystemExit:
        pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def _loaded(tmp_path: Path, *argv: str) -> set[str]:
    env = {**os.environ, "TALLY_DATA_DIR": str(tmp_path / "data")}
    env.pop("TALLY_CONFIG", None)
    env.pop("TALLY_DATABASE_URL", None)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stderr.strip().splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_library(tmp_path: Path) -> None:
    assert _loaded(tmp_path) & set(HEAVY) == set()


def test_commands_that_need_no_model_load_no_heavy_library(tmp_path: Path) -> None:
    _loaded(tmp_path, "ledger", "head")  # creates and migrates the database
    for argv in (["--help"], ["ledger", "head"], ["accounts", "list"], ["datanet", "list", "--as", "nobody"]):
        loaded = _loaded(tmp_path, *argv)
        assert loaded & set(HEAVY) == set(), argv
        # the schema is already current: answered without importing alembic
        assert "alembic" not in loaded, argv
