"""The package's folders are its processes, and imports run one way: nothing climbs back up.

- the shared core (compositor/*.py) and storage (a leaf library) import no process's package;
- pipeline (what a worker runs) knows neither the worker nor the service;
- the service knows neither its HTTP face (api) nor the worker's insides;
- cli, the outermost, may use them all.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "compositor"
CORE = "core"
# What each part may import from the package, besides itself.
MAY_USE = {
    CORE: {CORE, "storage"},
    "storage": {CORE},
    "pipeline": {CORE, "storage"},
    "worker": {CORE, "storage", "pipeline"},
    "service": {CORE, "storage"},
    "api": {CORE, "storage", "service"},
    "authoring": {CORE, "storage", "pipeline", "worker"},
    "ingress": {CORE, "storage", "pipeline", "worker"},
    "cli": {CORE, "storage", "pipeline", "worker", "service", "api", "authoring", "ingress"},
}


def part_of(module: str) -> str:
    """The part a module (`compositor.x.y`) belongs to: its folder, or the core for top-level modules."""
    parts = module.split(".")
    if len(parts) > 2 or (PACKAGE / parts[1]).is_dir():
        return parts[1]
    return CORE


def imports(path: Path) -> list[str]:
    """The package modules a file imports (relative imports resolved)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "compositor":  # from compositor import x: x is a module
                found += [f"compositor.{alias.name}" for alias in node.names]
            elif target.startswith("compositor."):
                found.append(target)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("compositor.")]
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_one_way(path):
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    mine = part_of(module + ".x" if path.name == "__init__.py" else module)
    climbing = [t for t in imports(path) if part_of(t) not in MAY_USE[mine] | {mine}]
    assert climbing == [], f"{module} ({mine}) imports {climbing}"


def test_the_storage_library_uses_nothing_of_ours_but_errors():
    for path in (PACKAGE / "storage").rglob("*.py"):
        used = {t for t in imports(path) if part_of(t) != "storage"}
        assert used <= {"compositor.errors"}, (path.name, used)


def test_benchmarks_do_not_import_the_tests():
    bench = PACKAGE.parent / "bench"
    for path in bench.glob("*.py"):
        tree = ast.parse(path.read_text())
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [n for n in names if n == "tests" or n.startswith("tests.")], path.name
