"""The diagnostics of the protocol, each defined once (no torch import: the plugin reads
the item names at collection).

A :class:`Diagnostic` holds everything the report, the renderers, the assertions, the
plugin items and the comparison need: its key and names, the threshold it is read against
and in which direction it fires, its unit, what firing means and what to do, whether it
takes part in the verdict, and ``evaluate(measurement, thresholds) -> DiagnosticResult``.
Adding a diagnostic is one :func:`register` call.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pytest_fa.core.report import DiagnosticResult, Measurement
    from pytest_fa.core.thresholds import DiagnosticThresholds


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic of the protocol.

    ``statistic`` names the value where reports are compared and averaged over seeds (the
    ``--fa-compare`` figure, the seed table's column); walk-back diagnostics with one are
    in the seed table.
    ``threshold`` names a field of :class:`~pytest_fa.core.thresholds.DiagnosticThresholds`, or,
    for a diagnostic added outside the package, any name with its ``default``.
    ``fires_above``: the statistic fires above the threshold (else below). ``walk_back``:
    firing walks the checkpoint back (else it only names a sub-mode). ``evaluate`` is a
    callable or a ``"module:function"`` path, loaded on first use.
    """

    key: str
    name: str
    item: str
    threshold: str
    fires_above: bool
    meaning: str
    evaluate: str | Callable[[Measurement, DiagnosticThresholds], DiagnosticResult]
    unit: str = ""
    what_to_do: str = ""
    walk_back: bool = True
    column: str = ""
    column_format: str = ".3g"
    default: float | None = None
    submode_in_verdict: bool = False
    statistic: str = ""

    @property
    def op(self) -> str:
        return ">" if self.fires_above else "<"

    def threshold_value(self, thresholds: DiagnosticThresholds) -> Any:
        return getattr(thresholds, self.threshold, self.default)

    def run(self, measurement: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
        evaluate = self.evaluate
        if isinstance(evaluate, str):
            module, _, attr = evaluate.partition(":")
            evaluate = getattr(importlib.import_module(module), attr)
        return evaluate(measurement, thresholds)

    def crosses(self, value: float, threshold: float) -> bool:
        """Whether ``value`` is on the firing side of ``threshold``."""
        return value > threshold if self.fires_above else value < threshold


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(
        "a", "residual growth", "residual_growth", "max_growth", True,
        "the residual stream explodes; the network is in a degenerate regime",
        "pytest_fa.core.report:evaluate_growth", unit="×",
        what_to_do="report the run as degenerate and do not quote its Γ; a scale penalty on the "
        "branches (λ Σ‖f_l‖²) or an earlier checkpoint keeps the stream bounded",
        column="(a) growth", statistic="growth",
    ),
    Diagnostic(
        "b", "gradient floor", "grad_floor", "grad_floor", False,
        "the BP reference is at the numerical floor because the backward gain through the "
        "terminal norm and head collapsed (Mode 1); Γ against it is not interpretable",
        "pytest_fa.core.report:evaluate_floor",
        what_to_do="quote per-layer Γ only from checkpoints before (b) fires (fa-train "
        "--stop-at-floor, or the temporal replay of the monitor)",
        column="(b) ‖g_L‖", submode_in_verdict=True, statistic="grad_ref",
    ),
    Diagnostic(
        "c", "direction stability", "direction_stability", "drift_ceiling", True,
        "sub-mode only: a drift-dominated reference is sample-invariant",
        "pytest_fa.core.report:evaluate_stability", walk_back=False,
        column="(c) stab.", column_format="+.2f", statistic="stability",
    ),
    Diagnostic(
        "d", "frozen-blocks margin", "frozen_margin", "frozen_margin_pp", False,
        "the trained blocks do not beat random frozen blocks; depth is not used",
        "pytest_fa.core.report:evaluate_frozen_margin", unit=" pp",
        what_to_do="report the frozen control beside the headline accuracy, and do not claim "
        "that the method trains the blocks",
        column="(d) margin", column_format="+.1f", statistic="margin_pp",
    ),
]


def get(key: str) -> Diagnostic:
    for diagnostic in DIAGNOSTICS:
        if diagnostic.key == key:
            return diagnostic
    raise KeyError(f"no diagnostic {key!r}; known: {[d.key for d in DIAGNOSTICS]}")


def seed_table_diagnostics() -> tuple[Diagnostic, ...]:
    """The diagnostics a seed table averages: those that walk a run back and name a statistic."""
    return tuple(d for d in DIAGNOSTICS if d.walk_back and d.statistic)


def walk_back_keys() -> tuple[str, ...]:
    """The keys whose firing walks a checkpoint back, in order."""
    return tuple(d.key for d in DIAGNOSTICS if d.walk_back)


def register(diagnostic: Diagnostic) -> Diagnostic:
    """Add a diagnostic to the protocol (its key and item name must be new)."""
    if any(d.key == diagnostic.key or d.item == diagnostic.item for d in DIAGNOSTICS):
        raise ValueError(f"a diagnostic with key {diagnostic.key!r} or item {diagnostic.item!r} exists")
    DIAGNOSTICS.append(diagnostic)
    return diagnostic


@contextmanager
def registered(diagnostic: Diagnostic) -> Iterator[Diagnostic]:
    """``diagnostic`` registered for the duration of a ``with`` block."""
    register(diagnostic)
    try:
        yield diagnostic
    finally:
        DIAGNOSTICS.remove(diagnostic)
