"""Module paths from before the ``core`` / ``training`` / ``plugin`` layout.

``import pytest_fa.report`` still works and gives the very module ``pytest_fa.core.report``
(the same object, so monkeypatching either name patches both). A finder at the front of
``sys.meta_path`` answers for the old names only; it must come before the path finder,
which would otherwise load a second copy of a moved package's submodule under its old name.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED = {
    **{
        f"pytest_fa.{name}": f"pytest_fa.core.{name}"
        for name in (
            "adapter", "calibration", "compare", "credit", "diagnostics", "interface", "markdown",
            "perturbation", "plot", "probe", "reference", "registry", "render", "report", "seeds",
            "settings", "thresholds",
        )
    },
    "pytest_fa.checkpoint": "pytest_fa.training.checkpoint",
    "pytest_fa.data": "pytest_fa.training.data",
    "pytest_fa.methods": "pytest_fa.training.methods",
    "pytest_fa.monitor": "pytest_fa.training.monitor",
    "pytest_fa.train": "pytest_fa.training.trainer",
    "pytest_fa.state": "pytest_fa.plugin._state",
}


def new_name(old: str) -> str | None:
    """The current dotted path of ``old`` (a moved module or a submodule of one), else None."""
    if not old.startswith("pytest_fa."):
        return None
    for before, after in MOVED.items():
        if old == before or old.startswith(before + "."):
            return after + old[len(before):]
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves an old module path to the module now at its new path."""

    def find_spec(self, fullname, path=None, target=None):
        current = new_name(fullname)
        if current is None or importlib.util.find_spec(current) is None:
            return None  # not moved, or no such module at the new path either
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(new_name(spec.name))
        spec.loader_state = module.__spec__
        return module

    def get_code(self, fullname: str):
        """The new module's code, for ``python -m <old path>``."""
        current = new_name(fullname)
        return importlib.util.find_spec(current).loader.get_code(current)

    def exec_module(self, module: ModuleType) -> None:
        # importlib has set the old name's spec on the shared module; give it back its own.
        module.__spec__ = module.__spec__.loader_state


def install() -> None:
    """Put the finder at the front of ``sys.meta_path`` (once)."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())
