"""The house's rooms (docs/ARCHITECTURE.md): who may import whom, no import cycles, nothing
loose at the top of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "extproc"
# Which rooms each room may import (besides itself). runtime, demo and cli may import anything.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "policy": {"core"},
    "identity": {"core"},
    "translate": {"core"},
    "audit": {"core"},
    "routing": {"core", "policy"},
    "health": {"core", "policy", "translate"},
    "deferral": {"core", "policy", "routing"},
    "escalation": {"core", "policy"},
    "filters": {"core", "policy", "identity", "routing", "health", "translate", "deferral", "escalation", "audit"},
    "xds": {"core", "policy", "routing"},
    "drills": {"core", "policy", "translate"},
    "review": {"core", "translate"},
}
TOP_LEVEL = {"__init__.py", "cli.py", "__main__.py"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> set[str]:
    """Every extproc module this file imports, at module level or inside functions."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("extproc"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("extproc"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if module_exists(sub) else target)
    return found


def module_exists(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {name: imports(path) - {name} for name, path in MODULES.items()}


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


@pytest.mark.parametrize("module", sorted(m for m in MODULES if room(m) in ALLOWED))
def test_each_room_imports_only_the_rooms_below_it(module: str) -> None:
    own = room(module)
    wrong = {m for m in GRAPH[module] if room(m) not in ALLOWED[own] | {own}}
    assert not wrong, f"{module} ({own}) may not import {sorted(wrong)}"


def test_core_imports_nothing_else_of_ours() -> None:
    for module in (m for m in MODULES if room(m) == "core"):
        assert all(room(m) == "core" for m in GRAPH[module]), module


def test_there_is_no_import_cycle_inside_extproc() -> None:
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in MODULES:
                continue
            if state.get(nxt) == 1:
                cycle = [*path[path.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(MODULES):
        if module not in state:
            visit(module)


def test_nothing_is_left_at_the_top_of_the_package() -> None:
    loose = {p.name for p in PACKAGE.glob("*.py")} - TOP_LEVEL
    assert not loose, f"modules outside a room: {sorted(loose)}"


def test_every_room_says_what_it_owns_and_may_import() -> None:
    for room_dir in (p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        doc = ast.get_docstring(ast.parse((room_dir / "__init__.py").read_text()))
        assert doc, f"{room_dir.name}/__init__.py has no docstring"
        if room_dir.name in ALLOWED:
            assert "import" in doc.lower(), f"{room_dir.name}: say what it may import"
