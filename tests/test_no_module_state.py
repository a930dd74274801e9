"""Library code keeps no state in modules: what lives across requests is built once at start and held by the
runtime (docs: "one runtime"). So no memoising decorators, no module-level caches, no lazily filled globals, and
no module-level objects, except those listed here with the reason they hold no runtime state.

An AST scan of src/tally: deterministic, and it names the file and line of each finding.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "tally"

CACHE_DECORATORS = {"lru_cache", "cache"}
# (file, function) -> why the memo is not runtime state
ALLOWED_CACHES = {
    ("datanets/licenses.py", "_licensing"): "the SPDX table shipped with license-expression: a constant, built on "
    "first use so commands that never check a license do not pay for it",
}

# Module-level objects of these classes are declarations, not state.
DECLARATION_CLASSES = {
    "TypeVar",  # typing
    "APIRouter",  # FastAPI routes, filled at import by decorators
    "Typer", "Option", "Argument",  # CLI commands and their parameters
    "Console",  # where the CLI prints
    "ContextVar",  # per-request context (each request sees its own value)
    "String",  # a SQLAlchemy column type
}  # fmt: skip
# (file, name) -> why this module-level object holds no runtime state
ALLOWED_OBJECTS = {
    ("rag/embed.py", "_LOCK"): "torch's thread count is process-wide, so the forwards that set it are serialised "
    "process-wide",
    ("rag/index.py", "_BLAS"): "threadpoolctl's handle on the process's BLAS libraries, themselves process-wide",
    ("datanets/readers.py", "_DECODER"): "a JSON decoder keeps nothing between calls",
    ("rewards/policy.py", "DEFAULT_POLICY"): "a constant (a frozen model)",
}
# (file, name) -> why this module-level container may be written to
ALLOWED_CONTAINERS = {
    ("ledger/events.py", "_REGISTRY"): "event classes register themselves when they are defined (at import): a "
    "table of types, the same in every runtime",
    ("ledger/events.py", "_SPECS"): "derived once per event class from its definition, which never changes: a "
    "property of the class, the same in every runtime",
}

MUTATING_METHODS = {
    "append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend", "insert", "remove", "discard",
    "move_to_end", "appendleft", "__setitem__",
}  # fmt: skip
CONTAINER_CALLS = {"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter"}
CONTAINER_NODES = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)


def _files() -> list[tuple[str, ast.Module]]:
    return [(f.relative_to(SRC).as_posix(), ast.parse(f.read_text())) for f in sorted(SRC.rglob("*.py"))]


def _callee(node: ast.expr) -> str | None:
    if not isinstance(node, ast.Call):
        return None
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _module_assignments(tree: ast.Module) -> list[tuple[str, ast.expr, int]]:
    out = []
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        out += [(t.id, value, node.lineno) for t in targets if isinstance(t, ast.Name)]
    return out


def _decorator_name(node: ast.expr) -> str | None:
    target = node.func if isinstance(node, ast.Call) else node
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute):
        return target.attr
    return None


def cache_findings(files: list[tuple[str, ast.Module]]) -> set[tuple[str, str]]:
    found = set()
    for rel, tree in files:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                _decorator_name(d) in CACHE_DECORATORS for d in node.decorator_list
            ):
                found.add((rel, node.name))
    return found


def object_findings(files: list[tuple[str, ast.Module]]) -> set[tuple[str, str]]:
    """Module-level `NAME = SomeClass(...)` (a call of a capitalised name, leading underscores aside)."""
    found = set()
    for rel, tree in files:
        for name, value, _ in _module_assignments(tree):
            callee = _callee(value)
            if callee and callee.lstrip("_")[:1].isupper() and callee not in DECLARATION_CLASSES | CONTAINER_CALLS:
                found.add((rel, name))
    return found


def container_findings(files: list[tuple[str, ast.Module]]) -> set[tuple[str, str]]:
    """Module-level dicts, lists and sets that the module writes to or whose name says they are a cache, and any
    `global` statement (a lazily filled global)."""
    found = set()
    for rel, tree in files:
        containers = set()
        for name, value, _ in _module_assignments(tree):
            if isinstance(value, CONTAINER_NODES) or _callee(value) in CONTAINER_CALLS:
                containers.add(name)
                if "CACHE" in name.upper() or "MEMO" in name.upper():  # filled through an alias, perhaps
                    found.add((rel, name))
        for node in ast.walk(tree):
            if isinstance(node, ast.Global):
                found |= {(rel, name) for name in node.names}
            written: list[ast.expr] = []
            if isinstance(node, (ast.Assign, ast.Delete)):
                written = [t.value for t in node.targets if isinstance(t, ast.Subscript)]
            elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
                written = [node.target.value]
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in MUTATING_METHODS
            ):
                written = [node.func.value]
            found |= {(rel, w.id) for w in written if isinstance(w, ast.Name) and w.id in containers}
    return found


def test_no_memoising_decorators_outside_the_allow_list() -> None:
    found = cache_findings(_files())
    assert sorted(found - set(ALLOWED_CACHES)) == [], "hold the cache in an object the runtime owns"
    assert sorted(set(ALLOWED_CACHES) - found) == [], "no longer found: remove from ALLOWED_CACHES"


def test_no_module_level_objects_outside_the_allow_list() -> None:
    found = object_findings(_files())
    assert sorted(found - set(ALLOWED_OBJECTS)) == [], "build it in the runtime (or the object that needs it)"
    assert sorted(set(ALLOWED_OBJECTS) - found) == [], "no longer found: remove from ALLOWED_OBJECTS"


def test_no_module_level_caches_or_lazily_filled_globals() -> None:
    found = container_findings(_files())
    assert sorted(found - set(ALLOWED_CONTAINERS)) == [], "hold the state in an object the runtime owns"
    assert sorted(set(ALLOWED_CONTAINERS) - found) == [], "no longer found: remove from ALLOWED_CONTAINERS"


def test_the_scan_finds_what_it_forbids() -> None:
    """The checks above pass on src only if they can fail: each kind of module state is found in a made-up module."""
    source = """
import functools
from functools import lru_cache

_WORDS: dict[str, int] = {}
_SEEN = set()
HASH_CACHE = {}
CACHE_SIZE = 16
INDEX = _Index()
LOADED = None

@lru_cache(maxsize=4)
def load(path): ...

@functools.cache
def table(): ...

def remember(word):
    alias = HASH_CACHE
    _WORDS[word] = 1
    _SEEN.add(word)

def fill():
    global LOADED
    LOADED = object()
"""
    files = [("made_up.py", ast.parse(source))]
    assert cache_findings(files) == {("made_up.py", "load"), ("made_up.py", "table")}
    assert object_findings(files) == {("made_up.py", "INDEX")}
    assert container_findings(files) == {
        ("made_up.py", "_WORDS"), ("made_up.py", "_SEEN"), ("made_up.py", "HASH_CACHE"), ("made_up.py", "LOADED"),
    }  # fmt: skip
