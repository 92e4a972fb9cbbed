"""The shape of the code base: imports point one way, modules stay readable.

Every import statement counts, wherever it is (module level, inside a function, under
TYPE_CHECKING): a lazy import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("realm", "host_functions")
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _package_of(module: str) -> str:
    """The folder a module lives in (a package's __init__ lives in the package)."""
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imported(module: str) -> Iterator[str]:
    """The project modules `module` imports (a `from package import name` of a submodule counts as it)."""
    package = _package_of(module)
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:  # `import a.b.c` of a name inside a module
                target = target.rpartition(".")[0]
            if target and target != module:
                yield target


GRAPH = {module: set(_imported(module)) for module in MODULES}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_between_modules() -> None:
    assert _cycles(GRAPH) == []


def test_no_import_cycle_between_folders() -> None:
    folders: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        here = _package_of(module)
        folders.setdefault(here, set()).update(_package_of(t) for t in targets if _package_of(t) != here)
    assert _cycles(folders) == []


def test_the_engine_never_imports_the_runtime() -> None:
    offenders = {m: sorted(t for t in targets if t.split(".")[0] == "realm")
                 for m, targets in GRAPH.items() if m.startswith("host_functions")}
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_is_short_enough_to_read(module: str) -> None:
    assert len(MODULES[module].read_text().splitlines()) <= MAX_LINES


def test_test_modules_have_one_basename_across_the_test_folders() -> None:
    """pytest imports tests/ and e2e/ modules by their basename: two of one name fail the whole run."""
    names = [p.name for folder in ("tests", "e2e") for p in (ROOT / folder).glob("test_*.py")]
    assert sorted({n for n in names if names.count(n) > 1}) == []
