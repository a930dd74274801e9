"""Each package imports only the packages above it in the design's table."""

from __future__ import annotations

import ast
from pathlib import Path

ALLOWED = {
    "config": set(),
    "store": {"config"},
    "ledger": {"store", "config"},
    "identity": {"store", "ledger"},
    "datanets": {"store", "ledger", "identity"},
    "models": {"config"},
    "engine": {"models"},
    "influence": {"models"},
    "factory": {"datanets", "models", "engine", "ledger", "influence"},
    "rag": {"datanets", "engine"},
    "attribution": {"influence", "engine", "rag", "datanets", "ledger"},
    "rewards": {"ledger", "attribution"},
    "chain": {"ledger", "rewards"},
}
SRC = Path(__file__).resolve().parents[1] / "src" / "tally"


def _closure(package: str) -> set[str]:
    """What a package may import: the packages it names, and what those may import in turn (config is everyone's)."""
    seen: set[str] = set()
    todo = [package]
    while todo:
        for dep in ALLOWED.get(todo.pop(), set()) | {"config"}:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen | {package}


def test_packages_import_only_what_the_design_allows() -> None:
    problems = []
    for package in sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        if package in ("api", "cli"):
            continue  # may import everything
        assert package in ALLOWED, f"tally.{package} is not in the design's table"
        allowed = _closure(package)
        for file in (SRC / package).rglob("*.py"):
            for node in ast.walk(ast.parse(file.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    parts = name.split(".")
                    if parts[0] == "tally" and len(parts) > 1 and parts[1] not in allowed:
                        problems.append(f"{file.relative_to(SRC)} imports tally.{parts[1]}")
    assert problems == []
