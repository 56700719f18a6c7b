"""``diagnose(...) -> DiagnosticReport``: the four diagnostics, per-layer Γ and the verdict;
the report's JSON and text forms and the summary table of several reports."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core import diagnostics as D
from pytest_fa.core import registry
from pytest_fa.core.calibration import null_gamma
from pytest_fa.core.ablation import Ablation
from pytest_fa.core.credit import DFACredit, FACredit
from pytest_fa.core.feedback_angle import feedback_angles, weight_backward_angles
from pytest_fa.core.probe import Probe, run_probe
from pytest_fa.core.reference import CreditSignal
from pytest_fa.core.registry import DiagnosticResult, Measurement
from pytest_fa.core.render import comparison, fmt, fmt_gamma, fmt_null, status, text_table
from pytest_fa.core.settings import MIN_EVAL_BATCHES
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import DataError, setting


@dataclass
class LayerRow:
    """Per-layer medians over samples of ``‖h_l‖``, ``‖g_l‖`` and the gain; ``Γ_l``."""

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
    removed_drop_pp: float | None = None  # the block writing h_l: accuracy drop with its branch removed
    removed_status: str = ""
    reset_drop_pp: float | None = None  # ... with it reset to its initial weights
    reset_status: str = ""
    wb_angle_deg: float | None = None  # B_l against the forward weight it stands in for
    wb_status: str = ""


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
    layout: str = "vector"
    headline_acc: float | None = None
    frozen_acc: float | None = None
    eval_acc: float | None = None
    accuracy_samples: int | None = None
    credit_status: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    null_draws: int = 0
    ablation: dict[str, Any] = field(default_factory=dict)  # status, accuracy, samples; {}: not measured
    weight_backward: list[dict[str, Any]] = field(default_factory=list)  # module, angle_deg, state

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
            submodes = {k: self.diagnostics[k].submode if registry.get(k).submode_in_verdict else "" for k in self.fired}
            return "needs walk-back: " + ", ".join(f"({k}: {m})" if m else f"({k})" for k, m in submodes.items())
        if self.missing:
            # a diagnostic measured but not informative says why; the others are "not evaluated"
            why = [k for k in self.missing if k in self.diagnostics and self.diagnostics[k].not_informative]
            plain = [k for k in self.missing if k not in why]
            parts = [", ".join(f"({k})" for k in plain) + " not evaluated"] if plain else []
            parts += [f"({k}) {self.diagnostics[k].submode}" for k in why]
            return "incomplete: " + "; ".join(parts)
        return "trustworthy"

    @property
    def gamma_per_layer(self) -> list[float | None]:
        return [row.gamma for row in self.layers]

    def gamma_mean(self, first_layer: int = 0) -> float | None:
        """Mean of the defined ``Γ_l`` over layers ``≥ first_layer`` (None if none defined)."""
        values = [r.gamma for r in self.layers[first_layer:] if r.gamma is not None]
        return sum(values) / len(values) if values else None

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
            "diagnostics": {k: {"name": r.name, **asdict(r)} for k, r in self.diagnostics.items()},
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
            "ablation": self.ablation,
            "weight_backward": self.weight_backward,
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
            ablation=dict(data.get("ablation") or {}),
            weight_backward=list(data.get("weight_backward") or []),
        )

    def __str__(self) -> str:
        """The text report: conditions, the per-layer table, each diagnostic and the verdict."""
        title = f"pytest-fa protocol: {self.label}" if self.label else "pytest-fa protocol"
        lines = [title, f"measured on {measured_on(self)}", ""]
        header, rows = layer_table(self)
        widths = [6, 11, 10, 11, 11, 10, 11, 18] + [12] * (len(header) - 8)
        shown = [i for i in range(1, len(header)) if i != 7 or self.null_draws]  # the null band when measured
        for cells in [["layer", *header[1:]], *rows]:
            lines.append(cells[0].ljust(6) + "".join(cells[i].rjust(widths[i]) for i in shown))
        lines.append("gain = ‖g_l‖ / ‖dCE/dlogits‖, the backward gain from the logits (median over samples)")
        lines += layer_extra_notes(self)
        lines.append(f"Γ: {self.credit_status}")
        partial = [r.index for r in self.layers if r.gamma_status.startswith("ok:")]
        if partial:
            lines.append(f"   at layers {partial}: {self.layers[partial[0]].gamma_status.removeprefix('ok: ')}")
        undefined: dict[str, list[int]] = {}  # reason -> layers
        for r in self.layers:
            if r.gamma_status.startswith("undefined"):
                reason = re.sub(r"‖g_\d+‖", "‖g_l‖", r.gamma_status.removeprefix("undefined: "))
                undefined.setdefault(reason, []).append(r.index)
        for reason, layers in undefined.items():
            lines.append(f"   undefined at layers {layers}: {reason}")
        lines.append("")
        for key, result in self.diagnostics.items():
            lines.append(f"({key}) {result.name:<21}{comparison(result):<36}{status(result)}")
            if result.detail:
                lines.append(f"    {result.detail}")
        if self.headline_acc is not None:
            frozen = f", frozen-blocks baseline {self.frozen_acc:.4f}" if self.frozen_acc is not None else ""
            lines.append(f"headline accuracy {self.headline_acc:.4f}{frozen}")
        lines += ["", f"VERDICT: {self.verdict}"]
        for key in self.fired:
            lines.append(f"  ({key}) {registry.get(key).meaning}")
        note = saturation_note(self)
        if note:
            lines.append(f"  {note}")
        return "\n".join(lines)


EXTRA_COLUMNS = (  # header, value field, status field, format of a value
    ("drop rm", "removed_drop_pp", "removed_status", "{:+.2f} pp"),
    ("drop reset", "reset_drop_pp", "reset_status", "{:+.2f} pp"),
    ("∠(W,B_l)", "wb_angle_deg", "wb_status", "{:.1f}°"),
)


def fmt_measured(value: float | None, status: str, form: str) -> str:
    """``value`` in ``form``; else the kind of ``status``, ``—`` where nothing was measured."""
    if value is not None:
        return form.format(value)
    return "—" if not status else status.partition(":")[0]


def layer_table(report: DiagnosticReport, emphasis: str | None = None) -> tuple[list[str], list[list[str]]]:
    """The per-layer table's header and text rows, with the measured :data:`EXTRA_COLUMNS`; with ``emphasis``
    an undefined or unavailable Γ_l is named between two ``emphasis`` marks, with its reason."""
    angles = any(r.wb_status for r in report.layers)
    extras = [c for c in EXTRA_COLUMNS if (angles if c[1] == "wb_angle_deg" else report.ablation)]
    header = ["state", "‖h_l‖", "growth", "‖g_l‖", f"‖g_l‖@{report.thresholds.floor_batch_size}", "gain", "Γ_l",
              f"null (n={report.null_draws})" if report.null_draws else "null", *(c[0] for c in extras)]
    rows = []
    for row in report.layers:
        gamma = fmt_gamma(row.gamma, row.gamma_status)
        if row.gamma is None and emphasis is not None:
            kind, _, reason = row.gamma_status.partition(": ")
            gamma = f"{emphasis}{kind}{emphasis} ({reason})" if reason else f"{emphasis}{row.gamma_status}{emphasis}"
        rows.append([
            f"h_{row.index}", fmt(row.h_norm), fmt(row.growth), fmt(row.g_norm), fmt(row.g_norm_at_reference),
            fmt(row.gain), gamma, fmt_null(row.null_mean, row.null_std),
            *(fmt_measured(getattr(row, value), getattr(row, why), form) for _, value, why, form in extras),
        ])
    return header, rows


def layer_extra_notes(report: DiagnosticReport) -> list[str]:
    """What the columns of :data:`EXTRA_COLUMNS` mean, and why a cell holds no number."""
    lines = []
    if report.ablation:
        samples = report.ablation.get("samples")
        lines.append(
            "drop rm / drop reset = acc − acc with the block writing h_l removed (h_l = h_{l-1}) / reset to "
            f"its initial weights, in pp of the accuracy on {samples} samples"
            + ("" if report.ablation.get("status") == "ok" else f"; {report.ablation.get('status')}")
        )
    if any(r.wb_status for r in report.layers):
        lines.append("∠(W,B_l) = degrees between B_l, which makes a_l, and the forward weight it stands in for: the "
                     "head's at l = L, below it the product of block l's Linear weights (the step h_l → h_l+1)")
    reasons: dict[str, list[int]] = {}
    for r in report.layers:
        for column, _, field_name, _ in EXTRA_COLUMNS:
            why = getattr(r, field_name)
            if why and why != "ok":
                reasons.setdefault(f"{column} {why}", []).append(r.index)
    lines += [f"   {text.partition(':')[0]} at layers {layers}:{text.partition(':')[2]}" for text, layers in reasons.items()]
    if report.weight_backward:
        lines.append("∠(weight, weight_backward): " + ", ".join(
            f"{e['module']} {fmt_measured(e['angle_deg'], 'not defined', '{:.1f}°')}" for e in report.weight_backward))
    return lines


LAYOUTS = {
    "vector": "",
    "tokens": "token states read at the cls token",
    "tokens_mean": "token states read as the mean over tokens",
    "tokens_all": "token states read over all tokens (‖h_l‖, ‖g_l‖ per sample), Γ at the cls token",
    "spatial": "feature maps read flattened",
}


def measured_on(report: DiagnosticReport) -> str:
    """The samples, dtype, mode, device, layout and named states of the measurement."""
    parts = [LAYOUTS.get(report.layout, report.layout)]
    states = report.context.get("states")
    if states:
        parts.append(f"states h_0..h_{len(states) - 1} = {', '.join(states)}")
    return (f"{report.num_batches} × {report.batch_size} eval samples, {report.dtype}, {report.mode} mode, "
            f"{report.device}; batch-mean CE" + "".join(f"; {p}" for p in parts if p))


def saturation_note(report: DiagnosticReport) -> str | None:
    """What an error-saturated (b) means and what to do about it (None when (b) is not)."""
    floor = report.diagnostics.get("b")
    if floor is None or floor.submode != "error-saturated":
        return None
    rule = (
        f"it fires only under the paper's rule ({setting('b_rule', 'paper')})" if floor.fires
        else "so (b) does not fire"
    )
    return (
        "(b) error-saturated: the reference is below the floor because the model is confident "
        "(‖e‖ = ‖softmax − onehot‖ → 0), not because the stream exploded — the backward gain "
        f"is healthy, {rule}. Γ_l is averaged over the samples whose error the backward pass "
        "carries soundly; for Γ over more samples, evaluate on held-out samples the model gets "
        f"wrong, on more eval batches ({setting('eval_batches')}), or on an earlier checkpoint."
    )


def summary_table(reports: list[DiagnosticReport]) -> str:
    """One line per checkpoint: the four statistics and the verdict."""
    diagnostics = registry.DIAGNOSTICS
    header = ("checkpoint", "method", "acc", "frozen", *(d.column or f"({d.key}) {d.name}" for d in diagnostics),
              "Γ mean", "verdict")
    return text_table([header] + [
        (r.label, str(r.context.get("method") or "?"), fmt(r.headline_acc, ".4f"), fmt(r.frozen_acc, ".4f"),
         *(_cell(d, r.diagnostics.get(d.key)) for d in diagnostics),
         fmt(r.gamma_mean(0), "+.3f") if r.gamma_mean(0) is not None else "n/a", r.verdict)
        for r in reports
    ])


def _cell(diagnostic: registry.Diagnostic, result: DiagnosticResult | None) -> str:
    """A summary-table cell: the statistic with its unit, ``!`` when it walks the run back."""
    if result is None or not result.evaluated:
        return "—"
    text = fmt(result.value, diagnostic.column_format) + diagnostic.unit
    return f"{text} !" if result.fires and diagnostic.walk_back else text


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
    ablation: Ablation | None = None,
) -> DiagnosticReport:
    """Run the protocol on ``model`` over ``eval_batches`` (≥ 8 disjoint batches of 128).

    (d) needs ``headline_acc`` and ``frozen_acc`` (else not evaluated: ``frozen_unavailable``);
    Γ needs ``credit`` (else unavailable: ``credit_unavailable``); a DFA credit adds the null
    band over ``null_draws`` fresh feedback draws, an FA or DFA credit the angle ``∠(W, B_l)``.
    ``reference_model``, a true-backprop twin, gives ``g_l`` for a model whose autograd is its
    method's backward; ``ablation`` fills the per-block accuracy drops.
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
        probe, thresholds=thresholds, headline_acc=headline_acc, frozen_acc=frozen_acc, accuracy_samples=accuracy_samples,
        credit_unavailable=credit_unavailable, frozen_unavailable=frozen_unavailable, label=label, context=context,
    )
    if with_null:
        # the null band reuses the probe's reference: no second forward/backward pass
        null = null_gamma(model, eval_batches, credit.feedback[-1].shape[0], n=null_draws,
                          exclude=credit.feedback, reference=(probe.grad_rows, probe.output_errors))
        for row, mean, std in zip(report.layers, null.null_mean, null.null_std, strict=True):
            if row.gamma is not None:  # Γ_l inside the band is not evidence of alignment
                row.null_mean, row.null_std = mean, std
        report.null_draws = int(null.draws.shape[0])
    if ablation is not None:  # block l's drops go on the row of h_{l+1}, the state it writes
        report.ablation = {"status": ablation.status, "accuracy": ablation.accuracy, "samples": ablation.samples}
        for block in ablation.blocks:
            if block.block + 1 < len(report.layers):
                row = report.layers[block.block + 1]
                row.removed_drop_pp, row.removed_status = block.removed_drop_pp, block.removed_status
                row.reset_drop_pp, row.reset_status = block.reset_drop_pp, block.reset_status
    add_feedback_angles(report, model, credit)
    return report


def add_feedback_angles(report: DiagnosticReport, model: nn.Module, credit: CreditSignal | None) -> None:
    """``∠(W, B_l)`` per row for an FA or DFA credit; every ``weight``/``weight_backward`` pair."""
    if isinstance(credit, (FACredit, DFACredit)) and len(credit.feedback) == len(report.layers):
        method = "fa" if isinstance(credit, FACredit) else "dfa"
        for row, (angle, why) in zip(report.layers, feedback_angles(model, credit.feedback, method)):
            row.wb_angle_deg, row.wb_status = angle, why
    inner = model.model if isinstance(getattr(model, "state_names", None), list) else model
    states = list(getattr(model, "state_names", None) or [])
    report.weight_backward = [
        {"module": name, "angle_deg": angle,
         "state": next((i for i, s in enumerate(states) if name == s or name.startswith(s + ".")), None)}
        for name, angle in weight_backward_angles(inner)
    ]


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
    g_ref = [D.grad_at_reference_batch(float(g), probe.batch_size, thresholds.floor_batch_size) for g in g_med]
    gains = layer_gains(probe)
    sound = sound_reference_samples(probe, thresholds)
    layers = []
    for i in range(probe.num_layers):
        gamma, status, count = _layer_gamma(probe, i, g_ref[i], gains[i], sound, thresholds, credit_unavailable)
        layers.append(LayerRow(
            index=i, h_norm=float(h_med[i]), growth=None if i == 0 else float(growth[i - 1]), g_norm=float(g_med[i]),
            g_norm_at_reference=g_ref[i], gamma=gamma, gamma_status=status, gamma_samples=count, gain=gains[i],
        ))
    measurement = Measurement(
        probe, h_med, g_med, gains, sound, headline_acc, frozen_acc, frozen_unavailable, accuracy_samples
    )
    results = {d.key: d.evaluate(measurement, thresholds) for d in registry.DIAGNOSTICS}
    return DiagnosticReport(
        label=label, layers=layers, diagnostics=results, thresholds=thresholds, batch_size=probe.batch_size,
        num_batches=probe.num_batches, dtype=probe.dtype, device=probe.device, mode=probe.mode, layout=probe.layout,
        headline_acc=headline_acc, frozen_acc=frozen_acc, eval_acc=probe.eval_accuracy, accuracy_samples=accuracy_samples,
        credit_status="computed" if probe.cosines is not None else f"unavailable: {credit_unavailable}",
        context=dict(context or {}),
    )


def layer_gains(probe: Probe) -> list[float | None]:
    """Median over samples of the backward gain ``‖g_l‖ / ‖dCE/dlogits‖`` at each ``h_l``."""
    if probe.logit_grad_norms is None:
        return [None] * probe.num_layers
    gains = [D.median_defined(D.backward_gain(norms, probe.logit_grad_norms)) for norms in probe.grad_norms]
    return [None if math.isnan(gain) else gain for gain in gains]


def sound_reference_samples(probe: Probe, thresholds: DiagnosticThresholds) -> torch.Tensor | None:
    """Samples whose output error is within :data:`diagnostics.OUTPUT_ERROR_TOLERANCE` (None:
    not measured, or the paper's rule)."""
    if probe.error_rel_errors is None or thresholds.b_rule == "paper":
        return None
    return probe.error_rel_errors <= D.OUTPUT_ERROR_TOLERANCE


def _check_batch_count(num_batches: int) -> None:
    if num_batches < MIN_EVAL_BATCHES:
        raise DataError(
            f"diagnostic (c) needs K ≥ {MIN_EVAL_BATCHES} disjoint eval batches, got "
            f"{num_batches}; give more batches ({setting('eval_batches')}) or a larger test split"
        )


def _layer_gamma(probe, index, g_ref, gain, sound, thresholds, unavailable) -> tuple[float | None, str, int]:
    """Γ_l = mean per-sample cosine; undefined below the floor (decomposed rule: only when the
    gain collapsed too, else over the numerically sound samples)."""
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
