"""The reporting template, filled in: one Markdown section per checkpoint (``--fa-report-md``)."""

from __future__ import annotations

from collections.abc import Sequence

from pytest_fa.core import registry
from pytest_fa.core.render import comparison, fmt
from pytest_fa.core.report import DiagnosticReport, layer_extra_notes, layer_table, measured_on, saturation_note
from pytest_fa.core.seeds import seed_columns, seed_groups, seed_rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows
    ]


def _conditions(report: DiagnosticReport) -> list[list[str]]:
    context = report.context
    return [
        ["method", str(context.get("method") or "—")],
        ["architecture", str(context.get("arch") or "—")],
        ["data", str(context.get("data") or "—")],
        ["seed / epochs", f"{context.get('seed', '—')} / {context.get('epochs', '—')}"],
        ["headline accuracy", fmt(report.headline_acc, ".4f")],
        ["frozen-blocks baseline", str(context.get("frozen_baseline") or fmt(report.frozen_acc, ".4f"))],
        ["measured on", measured_on(report)],
        ["thresholds", ", ".join(f"{k} {v}" for k, v in vars(report.thresholds).items())],
    ]


def _diagnostics(report: DiagnosticReport) -> list[list[str]]:
    rows = []
    for key, result in report.diagnostics.items():
        statistic = comparison(result)
        if key == "b" and result.components.get("gain") is not None:
            statistic += f"; gain {fmt(result.components['gain'])} × median ‖e‖ {fmt(result.components.get('error_norm'))} / B"
        outcome = "not evaluated" if not result.evaluated else ("FIRES" if result.fires else "ok")
        rows.append([f"({key})", registry.get(key).name, statistic, outcome, result.submode or "—"])
    return rows


def _checkpoint_section(report: DiagnosticReport) -> str:
    """The filled template of one checkpoint."""
    lines = [f"## {report.label or 'checkpoint'} — {report.verdict}", "", "### Conditions", ""]
    lines += _table(["", ""], _conditions(report))
    lines += ["", "### Diagnostics", ""]
    lines += _table(["", "diagnostic", "statistic (threshold)", "result", "sub-mode"], _diagnostics(report))
    lines += ["", "### Per layer", ""]
    lines += _table(*layer_table(report, emphasis="*"))
    lines += [""] + [f"- {note.strip()}" for note in layer_extra_notes(report)]
    lines += ["", f"Γ: {report.credit_status}", "", "### Verdict", "", f"**{report.verdict}**", ""]
    for key in report.fired:
        diagnostic = registry.get(key)
        lines.append(f"- ({key}) {diagnostic.meaning}. What to do: {diagnostic.what_to_do}.")
    for key in report.missing:
        result = report.diagnostics.get(key)
        if result is not None and result.not_informative:  # the detail starts with why
            lines.append(f"- ({key}) {result.detail}")
        else:
            why = result.detail.removeprefix("not evaluated: ") if result is not None else "absent"
            lines.append(f"- ({key}) not evaluated: {why}")
    note = saturation_note(report)
    if note:
        lines.append(f"- {note}")
    if report.trustworthy:
        lines.append("- none of (a), (b), (d) fires: the headline accuracy and the per-layer Γ can be reported as measured.")
    return "\n".join(lines)


def markdown_report(reports: list[DiagnosticReport], version: str = "", not_measured: Sequence[str] = ()) -> str:
    """Every checkpoint's filled template, after a one-line summary per checkpoint; with
    checkpoints ``not_measured``, a line under the title says the report is partial."""
    lines = [f"# pytest-fa protocol report{(' (pytest-fa ' + version + ')') if version else ''}", ""]
    if not_measured:
        total = len(reports) + len(not_measured)
        names = ", ".join(f"`{path}`" for path in not_measured)
        lines += [f"**Partial report**: {len(not_measured)} of {total} checkpoints not measured: {names}.", ""]
    lines += _table(
        ["checkpoint", "accuracy", "frozen", "verdict"],
        [[r.label or "checkpoint", fmt(r.headline_acc, ".4f"), fmt(r.frozen_acc, ".4f"), r.verdict] for r in reports],
    )
    groups = seed_groups(reports)
    if groups:
        lines += ["", "## Seeds of one configuration (mean ± sd)", ""]
        lines += _table(list(seed_columns()), [list(row) for row in seed_rows(groups)])
    for report in reports:
        lines += ["", _checkpoint_section(report)]
    return "\n".join(lines) + "\n"
