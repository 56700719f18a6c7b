"""``diagnose(...) -> DiagnosticReport``: the four diagnostics, per-layer Γ and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from . import diagnostics as D
from .credit import CreditSignal
from .errors import DataError
from .probe import Probe, run_probe
from .thresholds import DiagnosticThresholds

DIAGNOSTIC_NAMES = {
    "a": "residual growth",
    "b": "gradient floor",
    "c": "direction stability",
    "d": "frozen-blocks margin",
}
WALK_BACK_KEYS = ("a", "b", "d")
MIN_EVAL_BATCHES = 8


@dataclass
class DiagnosticResult:
    """One diagnostic: its statistic, threshold and whether it fires (None: not evaluated)."""

    key: str
    value: float | None
    threshold: float
    fires: bool | None
    layer: int | None = None
    detail: str = ""

    @property
    def name(self) -> str:
        return DIAGNOSTIC_NAMES[self.key]

    @property
    def evaluated(self) -> bool:
        return self.fires is not None


@dataclass
class LayerRow:
    """Per-layer numbers: medians over samples of ``‖h_l‖`` and ``‖g_l‖``, and ``Γ_l``."""

    index: int
    h_norm: float
    growth: float | None
    g_norm: float
    g_norm_at_reference: float
    gamma: float | None
    gamma_status: str
    gamma_samples: int = 0


@dataclass
class DiagnosticReport:
    """Everything the protocol measured on one model, with the conditions of measurement."""

    label: str
    layers: list[LayerRow]
    diagnostics: dict[str, DiagnosticResult]
    thresholds: DiagnosticThresholds
    batch_size: int
    num_batches: int
    dtype: str
    device: str
    mode: str
    headline_acc: float | None = None
    frozen_acc: float | None = None
    eval_acc: float | None = None
    credit_status: str = ""
    context: dict[str, Any] = field(default_factory=dict)

    # -- verdict ---------------------------------------------------------------------------
    @property
    def fired(self) -> list[str]:
        """Walk-back diagnostics that fired, among (a), (b), (d)."""
        return [k for k in WALK_BACK_KEYS if self.diagnostics[k].fires]

    @property
    def missing(self) -> list[str]:
        """Walk-back diagnostics that could not be evaluated."""
        return [k for k in WALK_BACK_KEYS if not self.diagnostics[k].evaluated]

    @property
    def trustworthy(self) -> bool:
        return not self.fired and not self.missing

    @property
    def verdict(self) -> str:
        if self.fired:
            return "needs walk-back: " + ", ".join(f"({k})" for k in self.fired)
        if self.missing:
            return "incomplete: " + ", ".join(f"({k})" for k in self.missing) + " not evaluated"
        return "trustworthy"

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
                "loss": "batch-mean cross-entropy",
            },
            "thresholds": asdict(self.thresholds),
            "diagnostics": {
                k: {"name": r.name, **asdict(r)} for k, r in self.diagnostics.items()
            },
            "layers": [asdict(row) for row in self.layers],
            "gamma": {
                "status": self.credit_status,
                "mean_all_layers": self.gamma_mean(0),
                "mean_deep_layers": self.gamma_mean(1),
            },
            "accuracy": {
                "headline": self.headline_acc,
                "frozen_baseline": self.frozen_acc,
                "eval_batches": self.eval_acc,
            },
            "context": self.context,
        }
        return _json_safe(out)

    def __str__(self) -> str:
        from .render import render_report

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
    credit: CreditSignal | None = None,
    credit_unavailable: str = "no credit signal given",
    frozen_unavailable: str | None = None,
    thresholds: DiagnosticThresholds | None = None,
    label: str = "",
    device: torch.device | str | None = None,
    context: dict[str, Any] | None = None,
) -> DiagnosticReport:
    """Run the protocol on ``model`` over ``eval_batches`` (≥ 8 disjoint batches of 128).

    ``headline_acc`` and ``frozen_acc`` feed (d); without both, (d) is reported as not
    evaluated (``frozen_unavailable`` says why) and the verdict cannot be ``trustworthy``. ``credit`` gives the method's
    ``a_l`` for per-layer Γ; without it Γ is reported unavailable with
    ``credit_unavailable`` as the reason, never computed against a fallback.
    """
    thresholds = thresholds or DiagnosticThresholds()
    _check_batch_count(len(eval_batches))
    probe = run_probe(model, eval_batches, credit=credit, device=device)
    return report_from_probe(
        probe,
        thresholds=thresholds,
        headline_acc=headline_acc,
        frozen_acc=frozen_acc,
        credit_unavailable=credit_unavailable,
        frozen_unavailable=frozen_unavailable,
        label=label,
        context=context,
    )


def report_from_probe(
    probe: Probe,
    *,
    thresholds: DiagnosticThresholds,
    headline_acc: float | None = None,
    frozen_acc: float | None = None,
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
    layers = []
    for index in range(probe.num_layers):
        gamma, status, count = _layer_gamma(probe, index, g_ref[index], thresholds, credit_unavailable)
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
            )
        )

    max_growth, block = D.residual_growth(h_med)
    deepest = probe.num_layers - 1
    stability = D.direction_stability(probe.mid_batch_means)
    results = {
        "a": DiagnosticResult(
            "a", max_growth, thresholds.max_growth, max_growth > thresholds.max_growth or math.isnan(max_growth),
            layer=block, detail=f"‖h_{block + 1}‖ / ‖h_{block}‖ (medians over samples)",
        ),
        "b": DiagnosticResult(
            "b", g_ref[deepest], thresholds.grad_floor,
            D.grad_floor(float(g_med[deepest]), probe.batch_size, thresholds.grad_floor, thresholds.floor_batch_size),
            layer=deepest,
            detail=f"median ‖g_{deepest}‖ = {float(g_med[deepest]):.3g} at eval batch {probe.batch_size}, "
            f"restated at batch {thresholds.floor_batch_size}",
        ),
        "c": DiagnosticResult(
            "c", stability, thresholds.drift_ceiling, stability > thresholds.drift_ceiling,
            layer=probe.mid_layer,
            detail=f"{D.stability_submode(stability, thresholds.drift_ceiling)}: "
            f"{probe.num_batches} disjoint batches, reference read at h_{probe.mid_layer}",
        ),
        "d": _frozen_result(headline_acc, frozen_acc, thresholds, frozen_unavailable),
    }
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
        headline_acc=headline_acc,
        frozen_acc=frozen_acc,
        eval_acc=probe.eval_accuracy,
        credit_status="computed" if probe.cosines is not None else f"unavailable: {credit_unavailable}",
        context=dict(context or {}),
    )


def _check_batch_count(num_batches: int) -> None:
    if num_batches < MIN_EVAL_BATCHES:
        raise DataError(
            f"diagnostic (c) needs K ≥ {MIN_EVAL_BATCHES} disjoint eval batches, got "
            f"{num_batches}; give more batches (--fa-eval-batches) or a larger test split"
        )


def _layer_gamma(probe, index, g_ref, thresholds, unavailable) -> tuple[float | None, str, int]:
    if probe.cosines is None:
        return None, f"unavailable: {unavailable}", 0
    cos = probe.cosines[index]
    if cos is None:
        return None, "no credit at this layer", 0
    if g_ref < thresholds.grad_floor:
        return None, f"undefined: ‖g_{index}‖ below the floor", 0
    mean, count = D.mean_defined(cos)
    if count == 0:
        return None, "undefined: every sample has a zero credit or gradient", 0
    return mean, "ok", count


def _frozen_result(headline_acc, frozen_acc, thresholds, unavailable=None) -> DiagnosticResult:
    if headline_acc is None or frozen_acc is None:
        missing = "headline accuracy" if headline_acc is None else "frozen-blocks accuracy"
        return DiagnosticResult(
            "d", None, thresholds.frozen_margin_pp, None,
            detail=f"not evaluated: {unavailable or 'no ' + missing}",
        )
    margin = D.frozen_margin_pp(headline_acc, frozen_acc)
    return DiagnosticResult(
        "d", margin, thresholds.frozen_margin_pp, margin < thresholds.frozen_margin_pp,
        detail=f"trained {headline_acc:.4f} − frozen {frozen_acc:.4f}",
    )
