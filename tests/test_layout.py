"""The package's layers: the protocol core depends on nothing above it, training only on the
core, and neither has pytest inside; the pytest layer is ``plugin/``, the fixtures, the
assertions and the pitfall suite."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import pytest_fa

PACKAGE = Path(pytest_fa.__file__).parent
ABOVE_CORE = ("pytest_fa.training", "pytest_fa.plugin", "pytest_fa.protocol", "pytest_fa.api",
              "pytest_fa.pitfalls", "pytest_fa.lint", "pytest_fa.fixtures", "pytest_fa.assertions")
ABOVE_TRAINING = tuple(p for p in ABOVE_CORE if p != "pytest_fa.training")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, at any depth of the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            assert node.level == 0, f"{path}: relative import of {node.module}"
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def offenders(folder: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if name == "pytest" or name.startswith(("pytest.", "_pytest")) or name.startswith(forbidden):
                found.append(f"{path.relative_to(PACKAGE)} imports {name}")
    return found


@pytest.mark.parametrize(("folder", "forbidden"), [("core", ABOVE_CORE), ("training", ABOVE_TRAINING)])
def test_a_layer_imports_nothing_above_it_and_no_pytest(folder, forbidden):
    assert offenders(folder, forbidden) == []


def test_the_layer_check_sees_a_violation(tmp_path, monkeypatch):
    fake = tmp_path / "pytest_fa"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "bad.py").write_text("def f():\n    from pytest_fa.plugin._state import STATE_KEY\n    import pytest\n")
    monkeypatch.setitem(globals(), "PACKAGE", fake)
    assert offenders("core", ABOVE_CORE) == [
        "core/bad.py imports pytest",
        "core/bad.py imports pytest_fa.plugin._state",
        "core/bad.py imports pytest_fa.plugin._state.STATE_KEY",
    ]


def test_only_the_public_surface_and_the_layers_sit_at_the_top():
    top = sorted(p.name for p in PACKAGE.iterdir() if p.name != "__pycache__" and not p.name.startswith("."))
    assert top == [
        "__init__.py", "api.py", "assertions.py", "core", "errors.py", "fixtures.py", "lint",
        "models.py", "pitfalls", "plugin", "protocol.py", "py.typed", "strategies.py", "training",
    ]


def test_the_pitfalls_package_holds_the_suite_and_no_developer_tool():
    """The guard-removal harness and the CHECKLIST.md generator live in tools/, outside the wheel."""
    modules = sorted(p.name for p in (PACKAGE / "pitfalls").glob("*.py") if not p.name.startswith("pitfall_"))
    assert modules == ["__init__.py", "fixtures.py", "regimes.py"]


def module_name(path: Path) -> str:
    parts = ["pytest_fa", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_circles(package: Path = PACKAGE) -> list[list[str]]:
    """Circles among the package's modules, counting imports at any depth of a file (a lazy
    import still ties the two modules together for a reader)."""
    paths = {module_name(p): p for p in package.rglob("*.py")}
    graph = {name: sorted({m for m in imported_modules(path) if m in paths and m != name}) for name, path in paths.items()}
    circles, done = [], set()

    def visit(name: str, trail: list[str]) -> None:
        if name in trail:
            circles.append(trail[trail.index(name):] + [name])
            return
        if name in done:
            return
        for other in graph[name]:
            visit(other, [*trail, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    return circles


def test_no_module_of_the_package_imports_itself_through_another():
    assert import_circles() == []


def test_the_circle_check_sees_a_circle(tmp_path):
    (tmp_path / "a.py").write_text("from pytest_fa.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    import pytest_fa.a\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path
    try:
        assert import_circles(tmp_path) == [["pytest_fa.a", "pytest_fa.b", "pytest_fa.a"]]
    finally:
        PACKAGE = saved
