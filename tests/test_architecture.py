"""The package's rooms import one another without a cycle.

Each folder of lira/ (lira.attacks, lira.training, lira.run, ...) and each top-level module
(lira.config, lira.dp, ...) is one node; an import anywhere in a node's files, function bodies
included, is an edge to the node it names. A cycle means two rooms can only be understood, tested
and changed together: the run directory's contract (lira.run) must not need the trainer that
writes it, and the trainer must not need the DP accountant that reads its schedule.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lira"


def node_of(module: str) -> str | None:
    """'lira.training.step' -> 'lira.training'; 'lira.dp' -> 'lira.dp'; a module outside lira -> None."""
    parts = module.split(".")
    if parts[0] != "lira":
        return None
    return ".".join(parts[:2]) if len(parts) > 1 else "lira"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """lira/training/step.py -> 'lira.training.step'; lira/run/__init__.py -> 'lira.run'."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_root: Path = PACKAGE) -> set[str]:
    """Every module an import statement of `path` names, at any depth (relative imports resolved)."""
    name = module_name(path, package_root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names = set()
    for statement in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(statement, ast.Import):
            names.update(alias.name for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            base = statement.module or ""
            if statement.level:
                anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names.add(base)
            # `from lira import dp` names the module lira.dp, not only the package.
            names.update(f"{base}.{alias.name}" for alias in statement.names)
    return names


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """node -> the other nodes its files import."""
    graph: dict[str, set[str]] = {}
    for path in sorted(package.rglob("*.py")):
        source = node_of(module_name(path, package))
        targets = graph.setdefault(source, set())
        for module in imported_modules(path, package):
            target = node_of(module)
            # `from lira import x` also yields the bare 'lira'; the package root imports no room.
            if target not in (None, source, "lira"):
                targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as its path [a, b, ..., a], or None (depth-first search, three colours)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for target in sorted(graph.get(node, ())):
            if target in on_path:
                return path[path.index(target) :] + [target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for node in sorted(graph):
        if node not in done:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_rooms_import_one_another_without_a_cycle():
    graph = import_graph()
    # The walk saw the rooms, and the edges every reader of the code relies on.
    assert {"lira.training", "lira.run", "lira.stages", "lira.attacks", "lira.config"} <= set(graph)
    assert "lira.run" in graph["lira.stages"] and "lira.training" in graph["lira.stages"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between lira's rooms: " + " -> ".join(cycle)


def test_find_cycle_finds_a_cycle_and_its_path():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"b"}, "d": {"a"}}) == ["b", "c", "b"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]


def test_imports_inside_functions_and_relative_imports_are_edges(tmp_path):
    room = tmp_path / "lira" / "room"
    room.mkdir(parents=True)
    (tmp_path / "lira" / "__init__.py").write_text("")
    (room / "__init__.py").write_text("from . import inner\n")
    (room / "inner.py").write_text("def f():\n    from lira import other\n    from ..config import X\n")
    (tmp_path / "lira" / "other.py").write_text("import lira.room.inner\n")
    (tmp_path / "lira" / "config.py").write_text("X = 1\n")
    graph = import_graph(tmp_path / "lira")
    assert graph == {"lira": set(), "lira.room": {"lira.other", "lira.config"}, "lira.other": {"lira.room"},
                     "lira.config": set()}  # fmt: skip
    assert find_cycle(graph) == ["lira.other", "lira.room", "lira.other"]
