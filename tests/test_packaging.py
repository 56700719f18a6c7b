"""The wheel installs one top-level package and registers the plugin."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    pytest.importorskip("setuptools")
    out = tmp_path_factory.mktemp("wheel")
    # from a copy without build/: setuptools reuses a checkout's build/lib, stale files included
    source = tmp_path_factory.mktemp("source") / "pytest-fa"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns("build", ".venv*", ".git", "__pycache__", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source), "-w", str(out)],
        check=True, capture_output=True,
    )
    (path,) = out.glob("pytest_fa-*.whl")
    return zipfile.ZipFile(path)


def test_only_pytest_fa_is_installed_at_the_top_level(wheel):
    top = {name.split("/")[0] for name in wheel.namelist()}
    assert {t for t in top if not t.endswith(".dist-info")} == {"pytest_fa"}
    assert "pytest_fa/py.typed" in wheel.namelist()
    assert "pytest_fa/models.py" in wheel.namelist()


def test_every_source_module_is_in_the_wheel(wheel):
    """Subpackages included (the pitfall suite must run from an installed wheel), nothing stale."""
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "pytest_fa").rglob("*.py") if "__pycache__" not in p.parts}
    shipped = {name for name in wheel.namelist() if name.endswith(".py")}
    assert shipped == source, {"missing": sorted(source - shipped), "stale": sorted(shipped - source)}


def test_entry_point_and_classifier(wheel):
    info = next(n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt"))
    entry_points = wheel.read(info).decode()
    assert "[pytest11]" in entry_points and "fa = pytest_fa.plugin" in entry_points
    assert "[flake8.extension]" in entry_points and "FA = pytest_fa.lint:Checker" in entry_points
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "Classifier: Framework :: Pytest" in metadata
    for dependency in ("pytest", "torch", "torchvision", "numpy", "hypothesis", "mnist1d"):
        assert f"Requires-Dist: {dependency}" in metadata
    assert "Provides-Extra: lint" in metadata and 'Requires-Dist: flake8>=6; extra == "lint"' in metadata


def test_the_pluggy_floor_covers_the_hook_wrappers_the_plugin_uses(wheel):
    """``hookimpl(wrapper=True)`` is pluggy 1.2 API; pytest 7.4 alone allows an older pluggy."""
    uses_wrappers = any("wrapper=True" in p.read_text() for p in (ROOT / "pytest_fa" / "plugin").rglob("*.py"))
    metadata = wheel.read(next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert uses_wrappers and "Requires-Dist: pluggy>=1.2" in metadata
