"""Thresholds of the four diagnostics (no torch import: the plugin reads these at start-up)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

from pytest_fa.errors import setting

REFERENCE_BATCH_SIZE = 128

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32
FLOAT32_TINY = 1.401298464324817e-45  # the smallest positive float32 (a subnormal)
FLOAT32_RATIO = FLOAT32_MAX / FLOAT32_TINY  # about 2.4e83: the largest ratio of two nonzero float32 magnitudes

_RANGES = {
    # threshold: (low, high, the statistic it is read against); a threshold is refused at or
    # beyond either end of its statistic's range, where the diagnostic always or never fires
    "max_growth": (1 / FLOAT32_RATIO, FLOAT32_RATIO, "(a)'s growth (a ratio of two float32 norms)"),
    "grad_floor": (FLOAT32_TINY, FLOAT32_MAX, "(b)'s reference ‖g_L‖ (a nonzero float32 norm)"),
    "gain_floor": (1 / FLOAT32_RATIO, FLOAT32_RATIO, "(b)'s backward gain (a ratio of two float32 norms)"),
    "drift_ceiling": (-1.0, 1.0, "(c)'s mean cosine"),
    "frozen_margin_pp": (-100.0, 100.0, "(d)'s margin (a difference of two accuracies, in points)"),
}


def _help(text: str) -> dict[str, str]:
    return {"help": text}


B_RULES = ("decomposed", "paper")


@dataclass(frozen=True)
class DiagnosticThresholds:
    """The protocol's thresholds (each field's help states its rule): the paper's defaults, plus
    pytest-fa's ``gain_floor`` and ``b_rule`` (``"paper"`` restores the paper's (b)). The gain floor
    of 1e-3 sits inside the measured gap, 69× above the largest Mode-1 gain (1.45e-5) and 399× below
    the smallest healthy one (0.399; ``examples/RESULTS.md``, "Budget invariance"). Each threshold
    lies strictly inside its statistic's range (:data:`_RANGES`), else its diagnostic always or never fires."""

    max_growth: float = field(default=50.0, metadata=_help(
        "(a) fires when the largest block growth max_l ‖h_{l+1}‖ / ‖h_l‖ exceeds this"))
    grad_floor: float = field(default=1e-7, metadata=_help(
        "(b): the reference ‖g_L‖, restated at floor_batch_size, is at the floor below this"))
    floor_batch_size: int = field(default=REFERENCE_BATCH_SIZE, metadata=_help(
        "batch size the floor is stated at (‖g‖ under a batch-mean loss scales with 1/B)"))
    gain_floor: float = field(default=1e-3, metadata=_help(
        "(b) under the decomposed rule: Mode 1 when the median backward gain ‖g_L‖ / ‖dCE/dlogits‖ is below this"))
    b_rule: str = field(default="decomposed", metadata=_help(
        "rule for (b): decomposed (default: fires when ‖g_L‖ is at the floor because the backward gain "
        "collapsed, reports error-saturated when the error vanished instead) or paper (the reference "
        "implementation: the floor alone)"))
    drift_ceiling: float = field(default=0.30, metadata=_help(
        "(c) is drift-dominated above this mean pairwise cosine of the batch-mean gradients"))
    frozen_margin_pp: float = field(default=2.0, metadata=_help(
        "(d) fires when trained − frozen accuracy is below this, in percentage points"))

    def __post_init__(self) -> None:
        if self.b_rule not in B_RULES:
            raise ValueError(f"{setting('b_rule', repr(self.b_rule))}: use one of {', '.join(B_RULES)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"{setting(f.name, repr(value))}: a threshold must be a finite number")
        for name in ("max_growth", "grad_floor", "floor_batch_size", "gain_floor"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{setting(name, f'{getattr(self, name):g}')}: {name} must be positive")
        for name, (low, high, statistic) in _RANGES.items():
            value = getattr(self, name)
            if not low < value < high:
                raise ValueError(
                    f"{setting(name, f'{value:g}')}: {statistic} lies in [{low:.3g}, {high:.3g}], and a threshold "
                    f"at or beyond either end makes its diagnostic always or never fire; give one strictly inside "
                    f"({low:.3g}, {high:.3g})"
                )

    def updated(self, **overrides: Any) -> DiagnosticThresholds:
        """A copy with some thresholds replaced; unknown names raise ``TypeError``."""
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown threshold(s) {sorted(unknown)}; known: {sorted(known)}")
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


def threshold_fields():
    """The dataclass fields of :class:`DiagnosticThresholds`, with their defaults."""
    return fields(DiagnosticThresholds)
