"""Thresholds of the four diagnostics (no torch import: the plugin reads these at start-up)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

REFERENCE_BATCH_SIZE = 128


@dataclass(frozen=True)
class DiagnosticThresholds:
    """The protocol's thresholds; the defaults are the paper's.

    ``max_growth``: (a) fires when ``max_l ‖h_{l+1}‖/‖h_l‖`` exceeds it.
    ``grad_floor``: (b) fires when ``‖g_L‖``, restated at ``floor_batch_size``, is below it.
    ``drift_ceiling``: (c) is drift-dominated above it.
    ``frozen_margin_pp``: (d) fires when trained − frozen accuracy is below it (points).
    """

    max_growth: float = 50.0
    grad_floor: float = 1e-7
    floor_batch_size: int = REFERENCE_BATCH_SIZE
    drift_ceiling: float = 0.30
    frozen_margin_pp: float = 2.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"threshold {f.name}={value!r} must be a finite number")
        if self.max_growth <= 0 or self.grad_floor <= 0 or self.floor_batch_size <= 0:
            raise ValueError("max_growth, grad_floor and floor_batch_size must be positive")

    def updated(self, **overrides: Any) -> DiagnosticThresholds:
        """A copy with some thresholds replaced; unknown names raise ``TypeError``."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(
                f"unknown threshold(s) {sorted(unknown)}; known: {sorted(known)}"
            )
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def threshold_fields():
    """The dataclass fields of :class:`DiagnosticThresholds`, with their defaults."""
    return fields(DiagnosticThresholds)
