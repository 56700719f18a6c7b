"""pytest-fa: the four-diagnostic evaluation protocol for local-credit training methods.

Importing the package is cheap; the names below load torch on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "adapt": "pytest_fa.adapter",
    "reference_pass": "pytest_fa.reference",
    "ReferencePass": "pytest_fa.reference",
    "ProtocolSettings": "pytest_fa.settings",
    "Diagnostic": "pytest_fa.registry",
    "register_diagnostic": "pytest_fa.registry",
    "check": "pytest_fa.api",
    "diagnose": "pytest_fa.report",
    "DiagnosticReport": "pytest_fa.report",
    "DiagnosticThresholds": "pytest_fa.thresholds",
    "Bundle": "pytest_fa.checkpoint",
    "load_bundle": "pytest_fa.checkpoint",
    "load_checkpoint": "pytest_fa.checkpoint",
    "save_bundle": "pytest_fa.checkpoint",
    "load_dataset": "pytest_fa.data",
    "eval_batches": "pytest_fa.data",
    "build_model": "pytest_fa.models",
}

__all__ = ["__version__", *_EXPORTS]


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_fa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), "register" if name == "register_diagnostic" else name)
