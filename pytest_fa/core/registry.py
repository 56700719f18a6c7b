"""The diagnostics of the protocol (:data:`DIAGNOSTICS`), each defined once with the function that
decides it; adding one is one :func:`register` call. No torch import: the plugin reads it at start-up."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import NonFiniteError

if TYPE_CHECKING:
    import torch

    from pytest_fa.core.probe import Probe

NOT_INFORMATIVE = "not informative"  # how the sub-mode of a measured diagnostic without a verdict begins
FROZEN_CEILING = f"{NOT_INFORMATIVE} (both accuracies at the ceiling)"  # (d) at the ceiling: frozen_at_ceiling


@dataclass
class DiagnosticResult:
    """One diagnostic: its statistic, threshold and whether it fires (None: not evaluated);
    ``submode`` names the regime, ``components`` the numbers it was decomposed into."""

    key: str
    value: float | None
    threshold: float
    fires: bool | None
    layer: int | None = None
    detail: str = ""
    submode: str = ""
    components: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return get(self.key).name

    @property
    def evaluated(self) -> bool:
        return self.fires is not None

    @property
    def not_informative(self) -> bool:
        """Measured, but unable to give a verdict (its sub-mode says why), so not evaluated."""
        return self.fires is None and self.submode.startswith(NOT_INFORMATIVE)


@dataclass
class Measurement:
    """What a diagnostic is evaluated on: the probe, per-layer medians, gains, sound samples, accuracies."""

    probe: Probe
    h_med: torch.Tensor
    g_med: torch.Tensor
    gains: list[float | None]
    sound: torch.Tensor | None
    headline_acc: float | None = None
    frozen_acc: float | None = None
    frozen_unavailable: str | None = None
    accuracy_samples: int | None = None


@dataclass(frozen=True)
class Diagnostic:
    """One diagnostic. ``threshold`` names a field of :class:`~pytest_fa.core.thresholds.DiagnosticThresholds`
    (or any name with its ``default``); ``walk_back``: firing walks the checkpoint back; ``statistic``:
    the value compared over seeds."""

    key: str
    name: str
    item: str
    threshold: str
    fires_above: bool
    meaning: str
    evaluate: Callable[[Measurement, DiagnosticThresholds], DiagnosticResult]
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

    def crosses(self, value: float, threshold: float) -> bool:
        """Whether ``value`` is on the firing side of ``threshold``."""
        return value > threshold if self.fires_above else value < threshold


def growth_result(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(a): the largest per-block growth of the median ``‖h_l‖`` (not evaluated where undefined)."""
    from pytest_fa.core.diagnostics import residual_growth

    try:
        max_growth, block = residual_growth(m.h_med)
    except NonFiniteError as exc:  # no verdict on an undefined growth
        return DiagnosticResult("a", None, thresholds.max_growth, None, detail=f"not evaluated: {exc}")
    return DiagnosticResult(
        "a", max_growth, thresholds.max_growth, max_growth > thresholds.max_growth,
        layer=block, detail=f"‖h_{block + 1}‖ / ‖h_{block}‖ (medians over samples)",
    )


def floor_result(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(b): the median ``‖g_L‖`` at the floor's batch size, judged with the median gain by
    :func:`~pytest_fa.core.diagnostics.floor_rule` (without output errors: the floor alone)."""
    from pytest_fa.core.diagnostics import OUTPUT_ERROR_TOLERANCE, floor_rule, grad_at_reference_batch

    probe, deepest = m.probe, m.probe.num_layers - 1
    errors, gain, g = probe.logit_grad_norms, m.gains[deepest], float(m.g_med[deepest])
    g_ref = grad_at_reference_batch(g, probe.batch_size, thresholds.floor_batch_size)
    components: dict[str, Any] = {"rule": thresholds.b_rule, "gain": gain, "gain_floor": thresholds.gain_floor}
    # a gain that is None with the errors measured is undefined (every error exactly zero): NaN
    read_gain = None if errors is None else float("nan") if gain is None else gain
    try:
        fires, submode = floor_rule(g_ref, read_gain, thresholds.grad_floor, thresholds.gain_floor, thresholds.b_rule)
    except NonFiniteError as exc:  # the one NaN rule: no verdict on it
        return DiagnosticResult("b", None, thresholds.grad_floor, None, layer=deepest,
                                detail=f"not evaluated: {exc}", components=components)
    detail = (
        f"median ‖g_{deepest}‖ = {g:.3g} at eval batch {probe.batch_size}, "
        f"restated at batch {thresholds.floor_batch_size}"
    )
    if errors is not None:
        error_norm = float((errors * probe.batch_size).median())
        saturated = int((probe.error_rel_errors > OUTPUT_ERROR_TOLERANCE).sum())
        components.update(error_norm=error_norm, saturated_samples=saturated, samples=len(errors))
        detail += (
            f" ≈ gain {'—' if gain is None else format(gain, '.3g')} × median ‖e‖ {error_norm:.3g} / B "
            f"(Mode 1 when the gain < {thresholds.gain_floor:g}); {saturated}/{len(errors)} samples' "
            f"errors inexact in {probe.dtype} (relative error > {OUTPUT_ERROR_TOLERANCE:g})"
        )
        if thresholds.b_rule == "paper":
            detail += "; paper rule: fires on the floor alone"
    return DiagnosticResult(
        "b", g_ref, thresholds.grad_floor, fires,
        layer=deepest, detail=detail, submode=submode, components=components,
    )


def stability_result(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(c): mean pairwise cosine of the batch-mean ``g`` at ``h_{L/2}`` (not evaluated where one is zero)."""
    from pytest_fa.core.diagnostics import direction_stability, stability_submode

    probe, ceiling = m.probe, thresholds.drift_ceiling
    try:
        stability = direction_stability(probe.mid_batch_means)
    except NonFiniteError as exc:  # no sub-mode of an undefined stability
        return DiagnosticResult("c", None, ceiling, None, layer=probe.mid_layer, detail=f"not evaluated: {exc}")
    submode = stability_submode(stability, ceiling)
    return DiagnosticResult(
        "c", stability, ceiling, stability > ceiling, layer=probe.mid_layer, submode=submode,
        detail=f"{submode}: {probe.num_batches} disjoint batches, reference read at h_{probe.mid_layer}",
    )


def frozen_result(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(d): trained − frozen accuracy in points (not evaluated without both, or at the ceiling)."""
    from pytest_fa.core.diagnostics import frozen_at_ceiling, frozen_ceiling_reason, frozen_margin_pp

    trained, frozen, threshold = m.headline_acc, m.frozen_acc, thresholds.frozen_margin_pp
    if trained is None or frozen is None:
        missing = "headline accuracy" if trained is None else "frozen-blocks accuracy"
        return DiagnosticResult("d", None, threshold, None, detail=f"not evaluated: {m.frozen_unavailable or 'no ' + missing}")
    margin = frozen_margin_pp(trained, frozen)
    if frozen_at_ceiling(trained, frozen, threshold, m.accuracy_samples):
        reason = frozen_ceiling_reason(trained, frozen, threshold, m.accuracy_samples)
        return DiagnosticResult("d", margin, threshold, None, submode=FROZEN_CEILING, detail=f"{FROZEN_CEILING}: {reason}")
    return DiagnosticResult("d", margin, threshold, margin < threshold, detail=f"trained {trained:.4f} − frozen {frozen:.4f}")


DIAGNOSTICS: list[Diagnostic] = [
    Diagnostic(
        "a", "residual growth", "residual_growth", "max_growth", True,
        "the residual stream explodes; the network is in a degenerate regime",
        growth_result, unit="×",
        what_to_do="report the run as degenerate and do not quote its Γ; a scale penalty on the "
        "branches (λ Σ‖f_l‖²) or an earlier checkpoint keeps the stream bounded",
        column="(a) growth", statistic="growth",
    ),
    Diagnostic(
        "b", "gradient floor", "grad_floor", "grad_floor", False,
        "the BP reference is at the numerical floor because the backward gain through the "
        "terminal norm and head collapsed (Mode 1); Γ against it is not interpretable",
        floor_result,
        what_to_do="quote per-layer Γ only from checkpoints before (b) fires (fa-train "
        "--stop-at-floor, or the temporal replay of the monitor)",
        column="(b) ‖g_L‖", submode_in_verdict=True, statistic="grad_ref",
    ),
    Diagnostic(
        "c", "direction stability", "direction_stability", "drift_ceiling", True,
        "sub-mode only: a drift-dominated reference is sample-invariant",
        stability_result, walk_back=False,
        column="(c) stab.", column_format="+.2f", statistic="stability",
    ),
    Diagnostic(
        "d", "frozen-blocks margin", "frozen_margin", "frozen_margin_pp", False,
        "the trained blocks do not beat random frozen blocks; depth is not used",
        frozen_result, unit=" pp",
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
