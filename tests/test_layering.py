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
    "answers": set(
        "config store ledger identity datanets models engine influence factory rag attribution rewards chain".split()
    ),
    "studio": {"answers"},
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


# The doors (api, cli) import the answer path and the packages' public faces only: a package's `__init__`, or one
# of the service modules named here (docs/design.md lists them). Internals of attribution and rewards never.
PUBLIC_MODULES = {
    "tally",
    "tally.answers",
    "tally.config.errors",
    "tally.config.logs",
    "tally.datanets.service",
    "tally.engine.registry",
    "tally.factory.config",
    "tally.factory.data",
    "tally.factory.evaluation",
    "tally.factory.jobs",
    "tally.factory.pipeline",
    "tally.factory.pipeline_spec",
    "tally.factory.service",
    "tally.identity.addresses",
}
PACKAGES = set(ALLOWED)
# what only the answer path may call: a door that calls one of these is growing its own orchestration
ANSWER_PATH_NAMES = {
    "Attributor", "settle_answer", "accrue", "retrieve", "build_rag_messages", "postprocess_citations",
    "build_engine", "Answer",
}  # fmt: skip
ANSWER_PATH_METHODS = {"generate", "stream_sync", "encode_chat", "attribute", "stream"}


def _door_problems(file: Path, door: str) -> list[str]:
    problems = []
    tree = ast.parse(file.read_text())
    for node in ast.walk(tree):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            names = {a.name for a in node.names}
            if names & ANSWER_PATH_NAMES:
                problems.append(f"{file.relative_to(SRC)} imports {sorted(names & ANSWER_PATH_NAMES)}")
        for module in modules:
            parts = module.split(".")
            if parts[0] != "tally" or (len(parts) > 1 and parts[1] == door) or (door, module) == ("cli", "tally.api"):
                continue
            face = len(parts) == 2 and parts[1] in PACKAGES
            if not (face or module in PUBLIC_MODULES):
                problems.append(f"{file.relative_to(SRC)} imports {module}, not a public face")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if node.func.attr in ANSWER_PATH_METHODS and not (isinstance(owner, ast.Name) and owner.id == "answers"):
                problems.append(f"{file.relative_to(SRC)}:{node.lineno} calls .{node.func.attr}() itself")
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ANSWER_PATH_NAMES:
            problems.append(f"{file.relative_to(SRC)}:{node.lineno} calls {node.func.id}() itself")
    return problems


def test_api_and_cli_use_public_faces_and_the_one_answer_path() -> None:
    problems = []
    for door in ("api", "cli"):
        for file in sorted((SRC / door).rglob("*.py")):
            problems += _door_problems(file, door)
    assert problems == [], "\n".join(problems)


def test_the_door_check_catches_a_route_that_orchestrates(tmp_path: Path) -> None:
    route = SRC / "api" / "_probe_route.py"
    route.write_text(
        "from tally.attribution.service import Attributor\nfrom tally.rewards.settle import settle_answer\n"
        "def answer(engine, prompt):\n    return engine.generate(prompt)\n"
    )
    try:
        found = _door_problems(route, "api")
    finally:
        route.unlink()
    assert len(found) == 5, found  # two internal modules, two answer-path names, one generate call
