"""``diagnose(...) -> DiagnosticReport``: the four diagnostics, per-layer Γ and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core import diagnostics as D
from pytest_fa.core import registry
from pytest_fa.core.calibration import NullCalibration, null_gamma
from pytest_fa.core.credit import CreditSignal, DFACredit
from pytest_fa.errors import DataError, NonFiniteError, setting
from pytest_fa.core.probe import Probe, run_probe
from pytest_fa.core.settings import MIN_EVAL_BATCHES
from pytest_fa.core.thresholds import DiagnosticThresholds


@dataclass
class DiagnosticResult:
    """One diagnostic: its statistic, threshold and whether it fires (None: not evaluated).

    ``submode`` names the regime the statistic points to ((b): above the floor, Mode 1 or
    error-saturated; (c): drift- or noise-dominated); ``components`` holds the numbers it
    was decomposed into ((b): backward gain and output-error norm).
    """

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
        return registry.get(self.key).name

    @property
    def evaluated(self) -> bool:
        return self.fires is not None

    @property
    def not_informative(self) -> bool:
        """Measured, but unable to give a verdict (its sub-mode says why), so not evaluated."""
        return self.fires is None and self.submode.startswith(D.NOT_INFORMATIVE)


@dataclass
class LayerRow:
    """Per-layer numbers: medians over samples of ``‖h_l‖``, ``‖g_l‖`` and the backward gain
    ``‖g_l‖ / ‖dCE/dlogits‖``, and ``Γ_l``."""

    index: int
    h_norm: float
    growth: float | None
    g_norm: float
    g_norm_at_reference: float
    gamma: float | None
    gamma_status: str
    gamma_samples: int = 0
    gain: float | None = None
    null_mean: float | None = None
    null_std: float | None = None


@dataclass
class DiagnosticReport:
    """Everything the protocol measured on one model, with the conditions of measurement.

    ``accuracy_samples`` is the number of samples the headline and frozen-blocks accuracies
    were measured on (None: not known); (d) reads it (:func:`diagnostics.frozen_at_ceiling`).
    """

    label: str
    layers: list[LayerRow]
    diagnostics: dict[str, DiagnosticResult]
    thresholds: DiagnosticThresholds
    batch_size: int
    num_batches: int
    dtype: str
    device: str
    mode: str
    layout: str = "vector"
    headline_acc: float | None = None
    frozen_acc: float | None = None
    eval_acc: float | None = None
    accuracy_samples: int | None = None
    credit_status: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    null_draws: int = 0

    # -- verdict ---------------------------------------------------------------------------
    @property
    def fired(self) -> list[str]:
        """Walk-back diagnostics that fired, among (a), (b), (d)."""
        return [k for k in registry.walk_back_keys() if k in self.diagnostics and self.diagnostics[k].fires]

    @property
    def missing(self) -> list[str]:
        """Walk-back diagnostics that could not be evaluated (or are absent from the report)."""
        return [
            k for k in registry.walk_back_keys() if k not in self.diagnostics or not self.diagnostics[k].evaluated
        ]

    @property
    def trustworthy(self) -> bool:
        return not self.fired and not self.missing

    @property
    def verdict(self) -> str:
        if self.fired:
            return "needs walk-back: " + ", ".join(self._walk_back_item(k) for k in self.fired)
        if self.missing:
            # a diagnostic measured but not informative says why; the others are "not evaluated"
            why = [k for k in self.missing if k in self.diagnostics and self.diagnostics[k].not_informative]
            plain = [k for k in self.missing if k not in why]
            parts = [", ".join(f"({k})" for k in plain) + " not evaluated"] if plain else []
            parts += [f"({k}) {self.diagnostics[k].submode}" for k in why]
            return "incomplete: " + "; ".join(parts)
        return "trustworthy"

    def _walk_back_item(self, key: str) -> str:
        submode = self.diagnostics[key].submode if registry.get(key).submode_in_verdict else ""
        return f"({key}: {submode})" if submode else f"({key})"

    # -- alignment summaries ----------------------------------------------------------------
    @property
    def gamma_per_layer(self) -> list[float | None]:
        return [row.gamma for row in self.layers]

    def gamma_mean(self, first_layer: int = 0) -> float | None:
        """Mean of the defined ``Γ_l`` over layers ``≥ first_layer`` (None if none defined)."""
        values = [r.gamma for r in self.layers[first_layer:] if r.gamma is not None]
        return sum(values) / len(values) if values else None

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; non-finite floats become None."""
        out = {
            "label": self.label,
            "verdict": self.verdict,
            "trustworthy": self.trustworthy,
            "fired": self.fired,
            "not_evaluated": self.missing,
            "measurement": {
                "batch_size": self.batch_size,
                "num_batches": self.num_batches,
                "samples": self.batch_size * self.num_batches,
                "dtype": self.dtype,
                "device": self.device,
                "mode": self.mode,
                "layout": self.layout,
                "loss": "batch-mean cross-entropy",
            },
            "thresholds": asdict(self.thresholds),
            "diagnostics": {
                k: {"name": r.name, **asdict(r)} for k, r in self.diagnostics.items()
            },
            "layers": [asdict(row) for row in self.layers],
            "gamma": {
                "status": self.credit_status,
                "null_draws": self.null_draws,
                "mean_all_layers": self.gamma_mean(0),
                "mean_deep_layers": self.gamma_mean(1),
            },
            "accuracy": {
                "headline": self.headline_acc,
                "frozen_baseline": self.frozen_acc,
                "eval_batches": self.eval_acc,
                "samples": self.accuracy_samples,
            },
            "context": self.context,
        }
        return _json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DiagnosticReport:
        """The report back from :meth:`to_dict` (``to_dict(from_dict(d)) == d``)."""
        measurement, accuracy, gamma = data["measurement"], data["accuracy"], data["gamma"]
        return cls(
            label=data["label"],
            layers=[LayerRow(**row) for row in data["layers"]],
            diagnostics={
                key: DiagnosticResult(**{k: v for k, v in result.items() if k != "name"})
                for key, result in data["diagnostics"].items()
            },
            thresholds=DiagnosticThresholds(**data["thresholds"]),
            batch_size=measurement["batch_size"],
            num_batches=measurement["num_batches"],
            dtype=measurement["dtype"],
            device=measurement["device"],
            mode=measurement["mode"],
            layout=measurement.get("layout", "vector"),
            headline_acc=accuracy["headline"],
            frozen_acc=accuracy["frozen_baseline"],
            eval_acc=accuracy["eval_batches"],
            accuracy_samples=accuracy.get("samples"),
            credit_status=gamma["status"],
            null_draws=gamma["null_draws"],
            context=dict(data["context"]),
        )

    def __str__(self) -> str:
        from pytest_fa.core.render import render_report

        return render_report(self)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def diagnose(
    model: nn.Module,
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    headline_acc: float | None = None,
    frozen_acc: float | None = None,
    accuracy_samples: int | None = None,
    credit: CreditSignal | None = None,
    credit_unavailable: str = "no credit signal given",
    frozen_unavailable: str | None = None,
    thresholds: DiagnosticThresholds | None = None,
    label: str = "",
    device: torch.device | str | None = None,
    context: dict[str, Any] | None = None,
    null_draws: int = 20,
    reference_model: nn.Module | None = None,
) -> DiagnosticReport:
    """Run the protocol on ``model`` over ``eval_batches`` (≥ 8 disjoint batches of 128).

    For a DFA credit (:class:`~pytest_fa.core.credit.DFACredit`) every row also carries the null
    band: Γ_l under ``null_draws`` fresh feedback draws, mean ± sd (0 turns it off).

    ``headline_acc`` and ``frozen_acc`` feed (d); without both, (d) is reported as not
    evaluated (``frozen_unavailable`` says why) and the verdict cannot be ``trustworthy``.
    ``accuracy_samples``, the number of samples both were measured on, lets (d) allow for their
    sampling resolution at the ceiling (without it, the observed headroom). ``credit`` gives the method's
    ``a_l`` for per-layer Γ; without it Γ is reported unavailable with
    ``credit_unavailable`` as the reason, never computed against a fallback.

    ``reference_model``, a twin of ``model`` that backpropagates truly with the same weights,
    gives the reference ``g_l`` where autograd on ``model`` is its method's backward, not
    backprop (such a model is refused without one); the states, accuracy and credit stay
    ``model``'s.
    """
    thresholds = thresholds or DiagnosticThresholds()
    _check_batch_count(len(eval_batches))
    with_null = bool(null_draws) and isinstance(credit, DFACredit)
    probe = run_probe(model, eval_batches, credit=credit, device=device, keep_rows=with_null,
                      reference_model=reference_model)
    if reference_model is not None:
        context = {**(context or {}), "reference": f"backprop through the reference model ({type(reference_model).__name__})"}
    if getattr(model, "state_names", None):
        context = {**(context or {}), "states": list(model.state_names)}
    report = report_from_probe(
        probe,
        thresholds=thresholds,
        headline_acc=headline_acc,
        frozen_acc=frozen_acc,
        accuracy_samples=accuracy_samples,
        credit_unavailable=credit_unavailable,
        frozen_unavailable=frozen_unavailable,
        label=label,
        context=context,
    )
    if with_null:
        # the null band reuses the probe's reference: no second forward/backward pass
        null = null_gamma(model, eval_batches, credit.feedback[-1].shape[0], n=null_draws,
                          exclude=credit.feedback, reference=(probe.grad_rows, probe.output_errors))
        _attach_null(report, null)
    return report


def _attach_null(report: DiagnosticReport, null: NullCalibration) -> DiagnosticReport:
    """Write the fresh-feedback null band (mean ± sd over draws) into each row whose Γ_l is
    defined; Γ_l inside the band is not evidence of alignment."""
    means, stds = null.null_mean, null.null_std
    if len(means) != len(report.layers):
        raise DataError(f"the null has {len(means)} layers, the report {len(report.layers)}")
    for row, mean, std in zip(report.layers, means, stds):
        if row.gamma is not None:
            row.null_mean, row.null_std = mean, std
    report.null_draws = int(null.draws.shape[0])
    return report


def report_from_probe(
    probe: Probe,
    *,
    thresholds: DiagnosticThresholds,
    headline_acc: float | None = None,
    frozen_acc: float | None = None,
    accuracy_samples: int | None = None,
    credit_unavailable: str = "no credit signal given",
    frozen_unavailable: str | None = None,
    label: str = "",
    context: dict[str, Any] | None = None,
) -> DiagnosticReport:
    """Apply the thresholds to a :class:`Probe`'s raw measurements."""
    _check_batch_count(probe.num_batches)
    h_med = D.layer_medians(probe.hidden_norms)
    g_med = D.layer_medians(probe.grad_norms)
    growth = D.block_growth(h_med)
    g_ref = [
        D.grad_at_reference_batch(float(g), probe.batch_size, thresholds.floor_batch_size)
        for g in g_med
    ]
    gains = layer_gains(probe)
    sound = sound_reference_samples(probe, thresholds)
    layers = []
    for index in range(probe.num_layers):
        gamma, status, count = _layer_gamma(
            probe, index, g_ref[index], gains[index], sound, thresholds, credit_unavailable
        )
        layers.append(
            LayerRow(
                index=index,
                h_norm=float(h_med[index]),
                growth=None if index == 0 else float(growth[index - 1]),
                g_norm=float(g_med[index]),
                g_norm_at_reference=g_ref[index],
                gamma=gamma,
                gamma_status=status,
                gamma_samples=count,
                gain=gains[index],
            )
        )
    measurement = Measurement(
        probe, h_med, g_med, gains, sound, headline_acc, frozen_acc, frozen_unavailable, accuracy_samples
    )
    results = {d.key: d.run(measurement, thresholds) for d in registry.DIAGNOSTICS}
    return DiagnosticReport(
        label=label,
        layers=layers,
        diagnostics=results,
        thresholds=thresholds,
        batch_size=probe.batch_size,
        num_batches=probe.num_batches,
        dtype=probe.dtype,
        device=probe.device,
        mode=probe.mode,
        layout=probe.layout,
        headline_acc=headline_acc,
        frozen_acc=frozen_acc,
        eval_acc=probe.eval_accuracy,
        accuracy_samples=accuracy_samples,
        credit_status="computed" if probe.cosines is not None else f"unavailable: {credit_unavailable}",
        context=dict(context or {}),
    )


@dataclass
class Measurement:
    """What a diagnostic is evaluated on: the probe, the per-layer medians of ``‖h_l‖`` and
    ``‖g_l‖``, the backward gains, the numerically sound samples, and the accuracies."""

    probe: Probe
    h_med: torch.Tensor
    g_med: torch.Tensor
    gains: list[float | None]
    sound: torch.Tensor | None
    headline_acc: float | None = None
    frozen_acc: float | None = None
    frozen_unavailable: str | None = None
    accuracy_samples: int | None = None


def evaluate_growth(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    return growth_result(m.h_med, thresholds)


def evaluate_floor(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    return floor_result(m.probe, m.g_med, m.gains, m.sound, thresholds)


def evaluate_stability(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    return _stability_result(m.probe, thresholds)


def evaluate_frozen_margin(m: Measurement, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    return _frozen_result(m.headline_acc, m.frozen_acc, thresholds, m.frozen_unavailable, m.accuracy_samples)


def layer_gains(probe: Probe) -> list[float | None]:
    """Median over samples of the backward gain ``‖g_l‖ / ‖dCE/dlogits‖`` at each ``h_l``."""
    if probe.logit_grad_norms is None:
        return [None] * probe.num_layers
    gains = []
    for norms in probe.grad_norms:
        gain = D.median_defined(D.backward_gain(norms, probe.logit_grad_norms))
        gains.append(None if math.isnan(gain) else gain)
    return gains


def sound_reference_samples(probe: Probe, thresholds: DiagnosticThresholds) -> torch.Tensor | None:
    """Samples whose output error the backward pass carried with a relative error of at most
    :data:`diagnostics.OUTPUT_ERROR_TOLERANCE` (None: not measured, or the paper's rule)."""
    if probe.error_rel_errors is None or thresholds.b_rule == "paper":
        return None
    return probe.error_rel_errors <= D.OUTPUT_ERROR_TOLERANCE


def growth_result(h_med: torch.Tensor, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(a): the largest per-block growth of the median ``‖h_l‖`` (not evaluated where a growth
    is undefined: :func:`diagnostics.residual_growth`)."""
    try:
        max_growth, block = D.residual_growth(h_med)
    except NonFiniteError as exc:  # no verdict on an undefined growth
        return DiagnosticResult("a", None, thresholds.max_growth, None, detail=f"not evaluated: {exc}")
    return DiagnosticResult(
        "a", max_growth, thresholds.max_growth, max_growth > thresholds.max_growth,
        layer=block, detail=f"‖h_{block + 1}‖ / ‖h_{block}‖ (medians over samples)",
    )


def floor_result(probe: Probe, g_med, gains, sound, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(b): the median ``‖g_L‖`` restated at the floor's batch size, with its decomposition
    ``‖g_L‖ · B = gain · ‖e‖`` and the sub-mode it points to."""
    deepest = probe.num_layers - 1
    g = float(g_med[deepest])
    g_ref = D.grad_at_reference_batch(g, probe.batch_size, thresholds.floor_batch_size)
    gain = gains[deepest]
    components: dict[str, Any] = {"rule": thresholds.b_rule, "gain": gain, "gain_floor": thresholds.gain_floor}
    try:
        at_floor = D.grad_floor(g, probe.batch_size, thresholds.grad_floor, thresholds.floor_batch_size)
    except NonFiniteError as exc:  # the one NaN rule: no verdict on it
        return DiagnosticResult("b", None, thresholds.grad_floor, None, layer=deepest,
                                detail=f"not evaluated: {exc}", components=components)
    detail = (
        f"median ‖g_{deepest}‖ = {g:.3g} at eval batch {probe.batch_size}, "
        f"restated at batch {thresholds.floor_batch_size}"
    )
    if probe.logit_grad_norms is None:
        submode = "at the floor" if at_floor else D.FLOOR_SUBMODES[0]
        fires = at_floor
    else:
        error_norm = float((probe.logit_grad_norms * probe.batch_size).median())
        saturated = int((probe.error_rel_errors > D.OUTPUT_ERROR_TOLERANCE).sum())
        components.update(error_norm=error_norm, saturated_samples=saturated, samples=len(probe.logit_grad_norms))
        submode = D.floor_submode(g_ref, float("nan") if gain is None else gain, thresholds.grad_floor, thresholds.gain_floor)
        fires = D.floor_fires(
            g_ref, float("nan") if gain is None else gain, thresholds.grad_floor, thresholds.gain_floor, thresholds.b_rule
        )
        detail += (
            f" ≈ gain {_fmt(gain)} × median ‖e‖ {error_norm:.3g} / B (Mode 1 when the gain < "
            f"{thresholds.gain_floor:g}); {saturated}/{len(probe.logit_grad_norms)} samples' "
            f"errors inexact in {probe.dtype} (relative error > {D.OUTPUT_ERROR_TOLERANCE:g})"
        )
        if thresholds.b_rule == "paper":
            detail += "; paper rule: fires on the floor alone"
    return DiagnosticResult(
        "b", g_ref, thresholds.grad_floor, fires,
        layer=deepest, detail=detail, submode=submode, components=components,
    )


def _stability_result(probe: Probe, thresholds: DiagnosticThresholds) -> DiagnosticResult:
    """(c): mean pairwise cosine of the normalised batch-mean ``g`` at ``h_{L/2}`` (not evaluated
    where a batch mean is zero: :func:`diagnostics.direction_stability`)."""
    try:
        stability = D.direction_stability(probe.mid_batch_means)
    except NonFiniteError as exc:  # no sub-mode of an undefined stability
        return DiagnosticResult("c", None, thresholds.drift_ceiling, None, layer=probe.mid_layer,
                                detail=f"not evaluated: {exc}")
    submode = D.stability_submode(stability, thresholds.drift_ceiling)
    return DiagnosticResult(
        "c", stability, thresholds.drift_ceiling, stability > thresholds.drift_ceiling,
        layer=probe.mid_layer, submode=submode,
        detail=f"{submode}: {probe.num_batches} disjoint batches, reference read at h_{probe.mid_layer}",
    )


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


def _check_batch_count(num_batches: int) -> None:
    if num_batches < MIN_EVAL_BATCHES:
        raise DataError(
            f"diagnostic (c) needs K ≥ {MIN_EVAL_BATCHES} disjoint eval batches, got "
            f"{num_batches}; give more batches ({setting('eval_batches')}) or a larger test split"
        )


def _layer_gamma(probe, index, g_ref, gain, sound, thresholds, unavailable) -> tuple[float | None, str, int]:
    """Γ_l = mean over samples of the per-sample cosine, where the reference means something.

    Paper rule: undefined when the restated median ``‖g_l‖`` is below the floor. Decomposed
    rule: undefined below the floor only when the gain collapsed too (Mode 1); otherwise the
    mean over the samples whose output error is numerically sound in the model's dtype.
    """
    if probe.cosines is None:
        return None, f"unavailable: {unavailable}", 0
    cos = probe.cosines[index]
    if cos is None:
        return None, "no credit at this layer", 0
    below = g_ref < thresholds.grad_floor
    if below and (sound is None or gain is None or gain < thresholds.gain_floor):
        return None, f"undefined: ‖g_{index}‖ below the floor", 0
    dropped = 0
    if sound is not None:
        dropped = int((~sound).sum())
        cos = torch.where(sound, cos, torch.full_like(cos, float("nan")))
    mean, count = D.mean_defined(cos)
    if count == 0:
        if dropped:
            return None, "undefined: every sample's output error is below the float precision", 0
        if not below:  # the reference is there: the credit is what is zero
            return None, "undefined: the credit is zero at every sample; check the credit signal", 0
        return None, "undefined: every sample has a zero credit or gradient", 0
    status = "ok"
    if dropped:
        status = f"ok: {dropped} samples with an unsound output error left out"
    if below:
        status = f"ok: error-saturated reference; {dropped} samples left out" if dropped else "ok: error-saturated reference"
    return mean, status, count


def _frozen_result(headline_acc, frozen_acc, thresholds, unavailable=None, samples=None) -> DiagnosticResult:
    """(d): trained − frozen accuracy in points (not evaluated without both; not informative,
    and not evaluated either, when both sit at the ceiling: :func:`diagnostics.frozen_at_ceiling`)."""
    if headline_acc is None or frozen_acc is None:
        missing = "headline accuracy" if headline_acc is None else "frozen-blocks accuracy"
        return DiagnosticResult(
            "d", None, thresholds.frozen_margin_pp, None,
            detail=f"not evaluated: {unavailable or 'no ' + missing}",
        )
    margin = D.frozen_margin_pp(headline_acc, frozen_acc)
    threshold = thresholds.frozen_margin_pp
    if D.frozen_at_ceiling(headline_acc, frozen_acc, threshold, samples):
        return DiagnosticResult(
            "d", margin, threshold, None, submode=D.FROZEN_CEILING,
            detail=f"{D.FROZEN_CEILING}: {frozen_ceiling_reason(headline_acc, frozen_acc, threshold, samples)}",
        )
    return DiagnosticResult("d", margin, threshold, margin < threshold, detail=f"trained {headline_acc:.4f} − frozen {frozen_acc:.4f}")


def frozen_ceiling_reason(trained_acc: float, frozen_acc: float, margin_pp: float, n: int | None = None) -> str:
    """Why (d) cannot show ``margin_pp`` at the ceiling (:func:`diagnostics.frozen_at_ceiling`),
    with both accuracies, ``n`` and the rule's numbers."""
    shown = f"trained {trained_acc:.4f} − frozen {frozen_acc:.4f}"
    if n is None:
        why = (f"{shown}, both within {margin_pp:g} pp of 1.0: the margin is at most 100·(1 − frozen) = "
               f"{100 * (1 - frozen_acc):.2f} pp, so it cannot reach {margin_pp:g} pp")
    else:
        why = (f"{shown} on n = {n} samples: the Wilson lower bound (z = {D.CEILING_Z:g}) of each error rate is "
               f"below {margin_pp:g} pp (trained {D.headroom_lower_bound_pp(trained_acc, n):.2f} pp, frozen "
               f"{D.headroom_lower_bound_pp(frozen_acc, n):.2f} pp), so {n} samples cannot show a {margin_pp:g} pp margin")
    return (f"{why} whatever the blocks learned; run (d) on a task or split the frozen-blocks model does not solve"
            + ("" if n is None else ", or measure both accuracies on more samples"))
