"""Thresholds of the four diagnostics (no torch import: the plugin reads these at start-up)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any

REFERENCE_BATCH_SIZE = 128


def _help(text: str) -> dict[str, str]:
    return {"help": text}
B_RULES = ("decomposed", "paper")


@dataclass(frozen=True)
class DiagnosticThresholds:
    """The protocol's thresholds: the paper's defaults, plus the decomposed (b) rule.

    ``gain_floor`` and ``b_rule`` are pytest-fa's (``b_rule="paper"`` restores the paper's
    (b)); the gain floor of 1e-3 sits inside the measured gap, 69× above the largest gain of
    a reference at the floor in Mode 1 (1.45e-5) and 399× below the smallest gain of a
    healthy network (0.399; ``examples/RESULTS.md``, "Budget invariance").

    ``max_growth``: (a) fires when ``max_l ‖h_{l+1}‖/‖h_l‖`` exceeds it.
    ``grad_floor``: the reference ``‖g_L‖``, restated at ``floor_batch_size``, is at the floor
    below it.
    ``gain_floor``: under ``b_rule="decomposed"`` (b) fires only when the reference is at
    the floor *and* the median backward gain ``‖g_L‖ / ‖dCE/dlogits‖`` is below it (Mode 1);
    a reference at the floor with a healthy gain is reported *error-saturated* instead.
    ``b_rule="paper"`` fires (b) on the floor alone, as the reference implementation does.
    ``drift_ceiling``: (c) is drift-dominated above it.
    ``frozen_margin_pp``: (d) fires when trained − frozen accuracy is below it (points).
    """

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
            raise ValueError(f"b_rule={self.b_rule!r}: use one of {', '.join(B_RULES)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, str):
                continue
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ValueError(f"threshold {f.name}={value!r} must be a finite number")
        if min(self.max_growth, self.grad_floor, self.floor_batch_size, self.gain_floor) <= 0:
            raise ValueError("max_growth, grad_floor, floor_batch_size and gain_floor must be positive")
        if not -1.0 < self.drift_ceiling < 1.0:
            raise ValueError(
                f"drift_ceiling={self.drift_ceiling}: a mean cosine lies in [-1, 1], and a ceiling at "
                "either end makes (c) always or never drift-dominated; give one strictly inside"
            )
        if not -100.0 <= self.frozen_margin_pp <= 100.0:
            raise ValueError(f"frozen_margin_pp={self.frozen_margin_pp}: a margin in points lies in [-100, 100]")

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
