"""pytest-fa: the four-diagnostic evaluation protocol for local-credit training methods.

Importing the package is cheap; the names below load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "adapt": "pytest_fa.core.adapter",
    "reference_pass": "pytest_fa.core.reference",
    "ReferencePass": "pytest_fa.core.reference",
    "ProtocolSettings": "pytest_fa.core.settings",
    "Diagnostic": "pytest_fa.core.registry",
    "register_diagnostic": "pytest_fa.core.registry",
    "check": "pytest_fa.api",
    "diagnose": "pytest_fa.core.report",
    "DiagnosticReport": "pytest_fa.core.report",
    "DiagnosticThresholds": "pytest_fa.core.thresholds",
    "Bundle": "pytest_fa.training.checkpoint",
    "load_bundle": "pytest_fa.training.checkpoint",
    "load_checkpoint": "pytest_fa.training.checkpoint",
    "save_bundle": "pytest_fa.training.checkpoint",
    "load_dataset": "pytest_fa.training.data",
    "eval_batches": "pytest_fa.training.data",
    "build_model": "pytest_fa.models",
    "frozen_control": "pytest_fa.training.frozen",
    "FABudgetWarning": "pytest_fa.errors",
    "FACacheWarning": "pytest_fa.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_fa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), "register" if name == "register_diagnostic" else name)
