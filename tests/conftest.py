"""Shared test set-up: JAX on the CPU with the scripts' XLA:CPU flags, where the offline data lives, and
the fast tier's check that it reaches every module of lira/."""

import ast
import os
from pathlib import Path

import pytest

from lira import xla_flags

os.environ.setdefault("JAX_PLATFORMS", "cpu")
xla_flags.add_cpu_flags()  # as lira.cli.run does for the scripts, before JAX starts

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


# The fast tier (./run.sh test --fast) deselects the tests marked slow. Run whole, it must still
# reach every module of lira/: at its end, the lira modules that its test files import (anywhere in
# them, and through what those modules import in turn) are compared with every lira/**/*.py.
FAST_TIER = "not slow"
_UNREACHED = pytest.StashKey[list]()


def lira_modules() -> dict[str, Path]:
    """Every module of lira/, packages included, by dotted name: found by walking the folder, so a
    module added later is checked too."""
    modules = {}
    for path in sorted((REPO_ROOT / "lira").rglob("*.py")):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imported_names(path: Path, package: str) -> set[str]:
    """The dotted names a file imports, with every package above them (importing a.b.c runs a and
    a.b) and, for `from a import b`, a.b, which is a module or else matches none."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the file's package, or one `level - 1` floors up
                base = ".".join(filter(None, [package.rsplit(".", node.level - 1)[0], base]))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {".".join(name.split(".")[:i]) for name in names for i in range(1, name.count(".") + 2)}


def reached_modules(test_files) -> set[str]:
    """The lira modules that `test_files` import, followed through lira's and tests/' own imports."""
    modules = lira_modules()
    test_helpers = {path.stem: path for path in Path(__file__).parent.glob("*.py")}
    reached, seen, to_read = set(), set(), [(Path(f), "") for f in test_files]
    while to_read:
        path, package = to_read.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, package):
            if name in modules:
                reached.add(name)
                is_package = modules[name].name == "__init__.py"
                to_read.append((modules[name], name if is_package else name.rpartition(".")[0]))
            elif name in test_helpers:
                to_read.append((test_helpers[name], ""))
    return reached


def _runs_the_whole_fast_tier(config) -> bool:
    """Only a run of every fast test can be held to reach every module: not one of chosen files, of
    -k or of the last failures."""
    if " ".join(config.option.markexpr.split()) != FAST_TIER or config.option.keyword:
        return False
    if getattr(config.option, "lf", False) or getattr(config.option, "stepwise", False):
        return False
    if config.args_source == pytest.Config.ArgsSource.TESTPATHS:
        return True
    tests = Path(__file__).parent.resolve()
    return [(config.invocation_params.dir / arg).resolve() for arg in config.args] == [tests]


def pytest_sessionfinish(session, exitstatus):
    if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED) or session.shouldstop:
        return
    if session.shouldfail or not _runs_the_whole_fast_tier(session.config):
        return
    if not session.items:  # pytest-xdist's controller: its workers hold the items; a serial run checks
        return
    reached = reached_modules({item.path for item in session.items})
    unreached = sorted(set(lira_modules()) - reached)
    if unreached:
        session.config.stash[_UNREACHED] = unreached
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config):
    unreached = config.stash.get(_UNREACHED, [])
    if unreached:
        terminalreporter.section("lira modules no fast test imports", red=True)
        for name in unreached:
            terminalreporter.line(name)
        terminalreporter.line(
            "Give each a quick test (tests/test_quick.py) or leave one of its tests unmarked."
        )
