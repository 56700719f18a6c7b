"""``pytest_fa.__all__`` is the public API: every name resolves, is documented, and loads
torch only when used; the module paths users already import keep working."""

from __future__ import annotations

import subprocess
import sys

import pytest

import pytest_fa

PUBLIC = {
    "__version__", "adapt", "check", "diagnose", "reference_pass", "ReferencePass", "ProtocolSettings",
    "Diagnostic", "register_diagnostic", "DiagnosticReport", "DiagnosticThresholds", "Bundle", "load_bundle",
    "load_checkpoint", "save_bundle", "load_dataset", "eval_batches", "build_model", "frozen_control",
    "FABudgetWarning",
}


def test_all_is_the_public_api_and_every_name_resolves_with_a_docstring():
    assert set(pytest_fa.__all__) == PUBLIC
    for name in PUBLIC - {"__version__"}:
        value = getattr(pytest_fa, name)
        assert callable(value) and (value.__doc__ or "").strip(), name
    assert set(pytest_fa.__all__) <= set(dir(pytest_fa))
    with pytest.raises(AttributeError, match="no attribute 'probe_internals'"):
        pytest_fa.probe_internals  # noqa: B018


def test_importing_the_package_does_not_import_torch():
    code = "import sys, pytest_fa; assert 'torch' not in sys.modules; pytest_fa.DiagnosticThresholds; print('ok')"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "ok"


NEW_PATHS = [
    "pytest_fa.models:build_model", "pytest_fa.fixtures:fa_report", "pytest_fa.fixtures:fa_settings",
    "pytest_fa.assertions:assert_beats_frozen", "pytest_fa.assertions:assert_grad_above_floor",
    "pytest_fa.core.credit:DFACredit", "pytest_fa.core.probe:run_probe", "pytest_fa.core.calibration:null_gamma",
    "pytest_fa.protocol:ProtocolSettings", "pytest_fa.protocol:ProtocolRunner", "pytest_fa.lint:Checker",
    "pytest_fa.training.trainer:train", "pytest_fa.training.methods:LocalCreditMethod", "pytest_fa.api:check",
    "pytest_fa.core.report:diagnose", "pytest_fa.plugin:pytest_addoption",
]
#: the module paths of pytest-fa 0.1.0 that the README documented, and where they live now
OLD_PATHS = {
    "pytest_fa.report": "pytest_fa.core.report", "pytest_fa.credit": "pytest_fa.core.credit",
    "pytest_fa.calibration": "pytest_fa.core.calibration", "pytest_fa.perturbation": "pytest_fa.core.perturbation",
    "pytest_fa.thresholds": "pytest_fa.core.thresholds", "pytest_fa.settings": "pytest_fa.core.settings",
    "pytest_fa.registry": "pytest_fa.core.registry", "pytest_fa.reference": "pytest_fa.core.reference",
    "pytest_fa.interface": "pytest_fa.core.interface", "pytest_fa.checkpoint": "pytest_fa.training.checkpoint",
    "pytest_fa.data": "pytest_fa.training.data", "pytest_fa.monitor": "pytest_fa.training.monitor",
    "pytest_fa.train": "pytest_fa.training.trainer", "pytest_fa.methods": "pytest_fa.training.methods",
    "pytest_fa.methods.equilibrium": "pytest_fa.training.methods.equilibrium", "pytest_fa.state": "pytest_fa.plugin._state",
}


@pytest.mark.parametrize("path", NEW_PATHS)
def test_the_public_module_paths_resolve(path):
    import importlib

    module, _, name = path.partition(":")
    assert getattr(importlib.import_module(module), name) is not None


IMPORT_BOTH = """
import importlib, json, sys
from pytest_fa._moved import MovedModuleFinder

def fresh():
    # what a new interpreter has of pytest-fa: nothing (torch, numpy stay: they are not under test)
    for name in [n for n in sys.modules if n == "pytest_fa" or n.startswith("pytest_fa.")]:
        del sys.modules[name]
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, MovedModuleFinder)]

problems = {}
for old, new in json.loads(sys.argv[1]).items():
    for first, second in ((old, new), (new, old)):
        fresh()
        one, two = importlib.import_module(first), importlib.import_module(second)
        # an old name may only be an alias of the module at the new name, never a second copy
        copies = [name for name, m in sys.modules.items() if name.startswith("pytest_fa.") and m is not None
                  and sys.modules.get(m.__name__) is not m]
        if one is not two or one.__name__ != new or one.__spec__.name != new or copies:
            problems.setdefault(old, []).append(f"{first} then {second}: {one!r} {two!r} {one.__spec__} {copies}")
print(json.dumps(problems))
"""


@pytest.fixture(scope="module")
def import_orders() -> dict[str, list[str]]:
    """Old path then new and new then old, each from a state without pytest-fa: one interpreter
    for all the paths (a fresh interpreter each took 2 s of torch imports)."""
    import json

    run = subprocess.run([sys.executable, "-c", IMPORT_BOTH, json.dumps(OLD_PATHS)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("old", sorted(OLD_PATHS))
def test_an_old_module_path_gives_the_same_module_object(old, import_orders):
    """Old path then new and new then old give one module, under its new name: one copy of
    every class, one place to monkeypatch."""
    assert old not in import_orders, import_orders[old]


def test_old_paths_share_state_with_the_new_ones(monkeypatch):
    import pytest_fa.core.thresholds as new
    import pytest_fa.thresholds as old

    monkeypatch.setattr(old, "DiagnosticThresholds", "patched")
    assert new.DiagnosticThresholds == "patched"
    from pytest_fa.methods import get_method
    from pytest_fa.training.methods import get_method as current

    assert get_method is current


def test_a_name_that_never_existed_is_still_not_found():
    with pytest.raises(ModuleNotFoundError, match="pytest_fa.nonexistent"):
        __import__("pytest_fa.nonexistent")
    with pytest.raises(ModuleNotFoundError, match="pytest_fa.methods.nonexistent"):
        __import__("pytest_fa.methods.nonexistent")


def test_an_old_path_still_runs_as_a_module():
    run = subprocess.run([sys.executable, "-m", "pytest_fa.train", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("usage: fa-train"), run.stderr
