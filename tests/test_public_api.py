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
    "load_checkpoint", "save_bundle", "load_dataset", "eval_batches", "build_model",
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


@pytest.mark.parametrize(
    "path",
    [
        "pytest_fa.models:build_model", "pytest_fa.fixtures:fa_report", "pytest_fa.assertions:assert_beats_frozen",
        "pytest_fa.assertions:assert_grad_above_floor", "pytest_fa.credit:DFACredit", "pytest_fa.probe:run_probe",
        "pytest_fa.calibration:null_gamma", "pytest_fa.protocol:ProtocolSettings", "pytest_fa.protocol:ProtocolRunner",
        "pytest_fa.lint:lint_file", "pytest_fa.train:train", "pytest_fa.api:check", "pytest_fa.report:diagnose", "pytest_fa.plugin:pytest_addoption",
    ],
)
def test_the_module_paths_users_import_keep_working(path):
    import importlib

    module, _, name = path.partition(":")
    assert getattr(importlib.import_module(module), name) is not None
