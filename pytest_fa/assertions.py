"""Assertions for a method repo's own tests. Each takes a :class:`DiagnosticReport` or the
raw tensors, and fails with the measured value, the threshold, the layer and what it means.

    from pytest_fa.assertions import assert_grad_above_floor, assert_beats_frozen

    def test_dfa_stays_measurable(fa_report):
        assert_grad_above_floor(fa_report)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pytest_fa.core import diagnostics as D
from pytest_fa.core import registry
from pytest_fa.core.interface import norm_rows
from pytest_fa.core.report import DiagnosticReport
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import NonFiniteError
from pytest_fa.training.frozen import check_budget

_DEFAULTS = DiagnosticThresholds()


def _rows(t: torch.Tensor, layout: str | None) -> torch.Tensor:
    if layout is None:
        layout = {2: "vector", 3: "tokens_all"}.get(t.dim(), "spatial")
    return norm_rows(t, layout)


def _fail(title: str, lines: Sequence[str], key: str) -> None:
    raise AssertionError("\n".join([title, *lines, f"Meaning: {registry.get(key).meaning}"]))


def assert_no_residual_explosion(source: DiagnosticReport | Sequence[torch.Tensor], max_growth: float | None = None,
                                 *, layout: str | None = None) -> None:
    """Diagnostic (a): ``max_l ‖h_{l+1}‖ / ‖h_l‖ ≤ max_growth`` (medians over samples).
    ``source``: a report, or the hidden states ``[h_0, ..., h_L]`` of one batch."""
    if isinstance(source, DiagnosticReport):
        norms = torch.tensor([row.h_norm for row in source.layers], dtype=torch.float64)
        max_growth = max_growth if max_growth is not None else source.thresholds.max_growth
    else:
        norms = D.layer_medians([D.per_sample_norms(_rows(h, layout)) for h in source])
        max_growth = max_growth if max_growth is not None else _DEFAULTS.max_growth
    growth, block = D.residual_growth(norms)
    if not growth <= max_growth:
        per_layer = ", ".join(f"h_{i} {float(n):.3g}" for i, n in enumerate(norms))
        _fail("Residual stream explodes: diagnostic (a) fires.", [
            f"Largest per-block growth: {growth:.4g}× at block {block} (‖h_{block + 1}‖ / ‖h_{block}‖)",
            f"Threshold: {max_growth:g}× (max_growth)",
            f"Median per-sample ‖h_l‖: {per_layer}",
        ], "a")


def assert_grad_above_floor(source: DiagnosticReport | torch.Tensor, floor: float | None = None, *,
                            batch_size: int | None = None, floor_batch_size: int | None = None,
                            layout: str | None = None) -> None:
    """Diagnostic (b): the BP reference at ``h_L`` is not at the numerical floor.

    ``source``: a report (its ``b_rule`` applies: under "decomposed" a low ``‖g_L‖`` fails only with
    a collapsed backward gain), or ``g_L = dCE/dh_L`` of one batch-mean-loss batch (the floor alone decides).
    """
    report = isinstance(source, DiagnosticReport)
    limits = source.thresholds if report else _DEFAULTS
    floor = floor if floor is not None else limits.grad_floor
    ref = floor_batch_size or limits.floor_batch_size
    if report:
        row = source.layers[-1]
        g, b, layer, gain, rule = row.g_norm, source.batch_size, row.index, row.gain, limits.b_rule
    else:
        rows = _rows(source, layout)
        g, b, layer, gain, rule = float(D.per_sample_norms(rows).median()), batch_size or rows.shape[0], None, None, "paper"
    restated = D.grad_at_reference_batch(g, b, ref)
    fires, submode = D.floor_rule(restated, gain, floor, limits.gain_floor, rule)
    if fires:
        where = f"h_{layer}" if layer is not None else "h_L"
        lines = [
            f"Median per-sample ‖g‖ at {where}: {g:.4g} at batch size {b} "
            f"= {restated:.4g} restated at batch size {ref}",
            f"Floor: {floor:g} (grad_floor, stated at batch size {ref})",
        ]
        if gain is not None:
            lines.append(f"Backward gain ‖g‖ / ‖dCE/dlogits‖ at {where}: {gain:.4g} "
                         f"(gain_floor {limits.gain_floor:g}): {submode}; rule: {rule}")
        lines.append("Any cosine to this reference is against noise; Γ at this layer is undefined.")
        _fail("BP reference gradient at the numerical floor: diagnostic (b) fires.", lines, "b")


def assert_reference_not_drift(source: DiagnosticReport | torch.Tensor, ceiling: float | None = None) -> None:
    """Diagnostic (c): mean pairwise cosine of per-batch mean gradients ``≤ ceiling``.

    ``source``: a report, or the per-batch mean gradients ``(K, F)`` at one layer. A
    stability that is undefined (a zero batch mean) raises :class:`~pytest_fa.errors.NonFiniteError`.
    """
    if isinstance(source, DiagnosticReport):
        result = source.diagnostics["c"]
        if result.value is None:  # an undefined stability (diagnostics.direction_stability)
            raise NonFiniteError(f"diagnostic (c) {result.detail}")
        stability, layer = float(result.value), result.layer
        ceiling = ceiling if ceiling is not None else source.thresholds.drift_ceiling
        batches = source.num_batches
    else:
        stability, layer, batches = D.direction_stability(source), None, source.shape[0]
        ceiling = ceiling if ceiling is not None else _DEFAULTS.drift_ceiling
    if not stability <= ceiling:
        where = f" at h_{layer}" if layer is not None else ""
        _fail("BP reference is drift-dominated: diagnostic (c) is above its ceiling.", [
            f"Cross-batch direction stability{where}: {stability:+.4f} over {batches} disjoint batches",
            f"Ceiling: {ceiling:g} (drift_ceiling)",
        ], "c")


def assert_beats_frozen(trained: DiagnosticReport | float, frozen_acc: float | None = None,
                        margin_pp: float | None = None, samples: int | None = None, *,
                        trained_epochs: int | None = None, frozen_epochs: int | None = None) -> None:
    """Diagnostic (d): trained accuracy exceeds the frozen-blocks baseline by ``margin_pp``.

    ``samples``: the samples both accuracies were measured on; both at the ceiling fails too ((d) says
    nothing there). Unequal ``trained_epochs``/``frozen_epochs`` give a :class:`~pytest_fa.errors.FABudgetWarning`.
    """
    check_budget(trained_epochs, frozen_epochs, "assert_beats_frozen")
    if isinstance(trained, DiagnosticReport):
        margin_pp = margin_pp if margin_pp is not None else trained.thresholds.frozen_margin_pp
        frozen_acc = frozen_acc if frozen_acc is not None else trained.frozen_acc
        samples = samples if samples is not None else trained.accuracy_samples
        trained_acc = trained.headline_acc
    else:
        trained_acc = trained
        margin_pp = margin_pp if margin_pp is not None else _DEFAULTS.frozen_margin_pp
    if trained_acc is None or frozen_acc is None:
        raise AssertionError(
            "assert_beats_frozen needs both the trained and the frozen-blocks accuracy; "
            "the report has none (pass frozen_acc=… or run with a frozen baseline)"
        )
    margin = D.frozen_margin_pp(trained_acc, frozen_acc)
    measured = [
        f"Trained accuracy {trained_acc:.4f} − frozen-blocks accuracy {frozen_acc:.4f} = {margin:+.2f} pp, "
        + (f"on n = {samples} samples" if samples is not None else "sample count not known"),
        f"Required margin: {margin_pp:g} pp (frozen_margin_pp)",
    ]
    if D.frozen_at_ceiling(trained_acc, frozen_acc, margin_pp, samples):
        raise AssertionError("\n".join([
            f"Diagnostic (d) is {registry.FROZEN_CEILING}: it cannot say whether trained blocks beat random frozen blocks.",
            *measured,
            f"Rule: {D.frozen_ceiling_reason(trained_acc, frozen_acc, margin_pp, samples)}.",
        ]))
    if not margin >= margin_pp:
        _fail("Trained blocks do not beat random frozen blocks: diagnostic (d) fires.", measured, "d")


def assert_trustworthy(report: DiagnosticReport) -> None:
    """The verdict is ``trustworthy``: none of (a), (b), (d) fires and all were evaluated."""
    if not report.trustworthy:
        raise AssertionError(f"Protocol verdict: {report.verdict}\n\n{report}")
