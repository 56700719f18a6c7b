"""Plain-text rendering of reports: the per-layer table and the verdict."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from pytest_fa.core import registry
from pytest_fa.errors import setting

if TYPE_CHECKING:
    from pytest_fa.core.report import DiagnosticReport, DiagnosticResult
    from pytest_fa.core.seeds import SeedGroup

class _Meanings(Mapping):
    """What firing means, per diagnostic key, read from the registry."""

    def __getitem__(self, key: str) -> str:
        return registry.get(key).meaning

    def __iter__(self) -> Iterator[str]:
        return iter([d.key for d in registry.DIAGNOSTICS])

    def __len__(self) -> int:
        return len(registry.DIAGNOSTICS)


MEANING: Mapping[str, str] = _Meanings()


def _error_saturated_note(fires: bool) -> str:
    """What an error-saturated (b) means and what to do about it."""
    rule = (
        f"it fires only under the paper's rule ({setting('b_rule', 'paper')})" if fires
        else "so (b) does not fire"
    )
    return (
        "(b) error-saturated: the reference is below the floor because the model is confident "
        "(‖e‖ = ‖softmax − onehot‖ → 0), not because the stream exploded — the backward gain "
        f"is healthy, {rule}. Γ_l is averaged over the samples whose error the backward pass "
        "carries soundly; for Γ over more samples, evaluate on held-out samples the model gets "
        f"wrong, on more eval batches ({setting('eval_batches')}), or on an earlier checkpoint."
    )


def text_table(rows: list) -> str:
    """Left-aligned columns two spaces apart, the first row a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def fmt_null(mean: float | None, std: float | None) -> str:
    return "—" if mean is None or std is None else f"{mean:+.3f} ± {std:.3f}"


def fmt_gamma(value: float | None, status: str) -> str:
    if value is not None:
        return f"{value:+.3f}"
    return "undefined" if status.startswith("undefined") else "n/a"


def comparison(result: DiagnosticResult) -> str:
    """``value op threshold`` as the diagnostic reads it."""
    diagnostic = registry.get(result.key)
    op, unit = diagnostic.op, diagnostic.unit
    if result.value is None:
        return f"— (fires {op} {fmt(result.threshold)}{unit})"
    return f"{fmt(result.value)}{unit} (fires {op} {fmt(result.threshold)}{unit})"


def status(result: DiagnosticResult) -> str:
    if not result.evaluated:
        return result.submode if result.not_informative else "not evaluated"
    diagnostic = registry.get(result.key)
    if not diagnostic.walk_back:
        return result.submode or ("fires" if result.fires else "ok")
    state = "FIRES" if result.fires else "ok"
    if diagnostic.submode_in_verdict and result.submode and result.submode != "above the floor":
        return f"{state} ({result.submode})"
    return state


LAYOUTS = {
    "vector": "",
    "tokens": "token states read at the cls token",
    "tokens_mean": "token states read as the mean over tokens",
    "tokens_all": "token states read over all tokens (‖h_l‖, ‖g_l‖ per sample), Γ at the cls token",
    "spatial": "feature maps read flattened",
}


def layout_note(report: DiagnosticReport) -> str:
    """How one sample of ``h_l`` was read, when it is not a plain vector; and the states named."""
    parts = [LAYOUTS.get(report.layout, report.layout)]
    states = report.context.get("states")
    if states:
        parts.append(f"states h_0..h_{len(states) - 1} = {', '.join(states)}")
    return "".join(f"; {p}" for p in parts if p)


def render_report(report: DiagnosticReport) -> str:
    lines = []
    title = f"pytest-fa protocol: {report.label}" if report.label else "pytest-fa protocol"
    lines.append(title)
    lines.append(
        f"measured on {report.num_batches} × {report.batch_size} eval samples, {report.dtype}, "
        f"{report.mode} mode, {report.device}; batch-mean CE{layout_note(report)}"
    )
    lines.append("")
    lines.append(
        f"{'layer':<6}{'‖h_l‖':>11}{'growth':>10}{'‖g_l‖':>11}"
        f"{'‖g_l‖@' + str(report.thresholds.floor_batch_size):>11}{'gain':>10}{'Γ_l':>11}"
        + (f"{'null (n=' + str(report.null_draws) + ')':>18}" if report.null_draws else "")
    )
    for row in report.layers:
        lines.append(
            f"h_{row.index:<4}{fmt(row.h_norm):>11}{fmt(row.growth):>10}{fmt(row.g_norm):>11}"
            f"{fmt(row.g_norm_at_reference):>11}{fmt(row.gain):>10}{fmt_gamma(row.gamma, row.gamma_status):>11}"
            + (f"{fmt_null(row.null_mean, row.null_std):>18}" if report.null_draws else "")
        )
    lines.append("gain = ‖g_l‖ / ‖dCE/dlogits‖, the backward gain from the logits (median over samples)")
    lines.append(f"Γ: {report.credit_status}")
    partial = [r.index for r in report.layers if r.gamma_status.startswith("ok:")]
    if partial:
        lines.append(f"   at layers {partial}: {report.layers[partial[0]].gamma_status.removeprefix('ok: ')}")
    undefined: dict[str, list[int]] = {}  # reason -> layers
    for r in report.layers:
        if r.gamma_status.startswith("undefined"):
            reason = re.sub(r"‖g_\d+‖", "‖g_l‖", r.gamma_status.removeprefix("undefined: "))
            undefined.setdefault(reason, []).append(r.index)
    for reason, layers in undefined.items():
        lines.append(f"   undefined at layers {layers}: {reason}")
    lines.append("")
    for key, result in report.diagnostics.items():
        lines.append(f"({key}) {result.name:<21}{comparison(result):<36}{status(result)}")
        if result.detail:
            lines.append(f"    {result.detail}")
    if report.headline_acc is not None:
        lines.append(f"headline accuracy {report.headline_acc:.4f}" + (
            f", frozen-blocks baseline {report.frozen_acc:.4f}" if report.frozen_acc is not None else ""
        ))
    lines.append("")
    lines.append(f"VERDICT: {report.verdict}")
    for key in report.fired:
        lines.append(f"  ({key}) {MEANING[key]}")
    note = saturation_note(report)
    if note:
        lines.append(f"  {note}")
    return "\n".join(lines)


def saturation_note(report: DiagnosticReport) -> str | None:
    """The error-saturated note when (b) is error-saturated, else None."""
    floor = report.diagnostics.get("b")
    if floor is None or floor.submode != "error-saturated":
        return None
    return _error_saturated_note(bool(floor.fires))


def summary_table(reports: list[DiagnosticReport]) -> str:
    """One line per checkpoint: the four statistics and the verdict."""
    diagnostics = registry.DIAGNOSTICS
    header = ("checkpoint", "method", "acc", "frozen", *(d.column or f"({d.key}) {d.name}" for d in diagnostics),
              "Γ mean", "verdict")
    rows = [header]
    for r in reports:
        rows.append((
            r.label,
            str(r.context.get("method") or "?"),
            fmt(r.headline_acc, ".4f"),
            fmt(r.frozen_acc, ".4f"),
            *(_cell(d, r.diagnostics.get(d.key)) for d in diagnostics),
            fmt(r.gamma_mean(0), "+.3f") if r.gamma_mean(0) is not None else "n/a",
            r.verdict,
        ))
    return text_table(rows)


def _fmt_mean_sd(stat: tuple[float | None, float | None, int], spec: str = ".3g") -> str:
    mean, sd, _ = stat
    if mean is None:
        return "—"
    return format(mean, spec) + ("" if sd is None else " ± " + format(sd, spec.replace("+", "")))


def seed_columns() -> tuple[str, ...]:
    """The seed table's header; a diagnostic's column carries its unit when the unit is a
    word (`` pp``), not when it is a sign glued to the number (``×``)."""
    diagnostics = registry.seed_table_diagnostics()
    named = tuple(d.column + (d.unit if d.unit.startswith(" ") else "") for d in diagnostics)
    return ("configuration", "seeds", "acc", *named, "deep Γ", "verdicts")


def seed_rows(groups: list[SeedGroup]) -> list[tuple[str, ...]]:
    """Per configuration: mean ± sd over its seeds and how many seeds got each verdict."""
    rows = []
    for group in groups:
        stats = group.statistics()
        rows.append((
            group.name,
            ", ".join(str(s) for s in group.seeds),
            _fmt_mean_sd(stats["headline_acc"], ".4f"),
            *(_fmt_mean_sd(stats[d.statistic], d.column_format.replace("+", "")) for d in registry.seed_table_diagnostics()),
            _fmt_mean_sd(stats["deep_gamma"], "+.3f"),
            "; ".join(f"{verdict} ×{count}" for verdict, count in group.verdicts().items()),
        ))
    return rows


def seed_table(groups: list[SeedGroup]) -> str:
    return text_table([seed_columns(), *seed_rows(groups)])


def _cell(diagnostic: registry.Diagnostic, result: DiagnosticResult | None) -> str:
    """A summary-table cell: the statistic with its unit, ``!`` when it walks the run back."""
    if result is None or not result.evaluated:
        return "—"
    text = fmt(result.value, diagnostic.column_format) + diagnostic.unit
    return f"{text} !" if result.fires and diagnostic.walk_back else text
