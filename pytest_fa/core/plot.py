"""One PNG figure per protocol report: ``‖h_l‖`` and ``‖g_l‖`` against the floor, ``Γ_l`` against
the null band and, when measured, the per-block accuracy drops. matplotlib is imported inside the
functions only and drawn through the Agg canvas (no pyplot, no global state)."""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_fa.core.files import write_atomically

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from pytest_fa.core.report import DiagnosticReport

FIGSIZE = (10.0, 4.0)
DPI = 120
_DEFAULT_NAME = "checkpoint"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def report_figure(report: DiagnosticReport) -> Figure:
    """The report's figure: norms against the floor, Γ_l against the null, the per-block drops."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 3 if report.ablation else 2  # the third: which block learned
    fig = Figure(figsize=(FIGSIZE[0] * panels / 2, FIGSIZE[1]), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels)
    _draw_norms(axes[0], report)
    _draw_gamma(axes[1], report)
    if report.ablation:
        _draw_ablation(axes[2], report)
    fig.suptitle(f"{report.label or _DEFAULT_NAME} — {report.verdict}", fontsize="large")
    return fig


def report_png(report: DiagnosticReport) -> bytes:
    """The report's figure as PNG bytes, the content of its ``--fa-plot`` file."""
    fig = report_figure(report)
    buffer = io.BytesIO()
    try:
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        fig.clear()
    return buffer.getvalue()


def write_report_plots(reports: Iterable[DiagnosticReport], folder: str | Path) -> list[Path]:
    """One ``<safe label>.png`` per report in ``folder`` (created); a repeated name gets ``-2``, ``-3``, …"""
    taken: set[str] = set()
    paths = []
    for report in reports:
        stem = base = safe_name(report.label)
        count = 1
        while stem in taken:
            count += 1
            stem = f"{base}-{count}"
        taken.add(stem)
        paths.append(Path(folder) / f"{stem}.png")
        write_atomically(paths[-1], report_png(report))
    return paths


def safe_name(label: str) -> str:
    """The file stem for ``label``: ``[A-Za-z0-9._-]`` kept, the rest ``_``, no trailing ``.pt``."""
    return _UNSAFE.sub("_", label).removesuffix(".pt") or _DEFAULT_NAME


# -- panels ------------------------------------------------------------------------------


def _draw_norms(ax: Axes, report: DiagnosticReport) -> None:
    rows = report.layers
    ax.set_yscale("log")
    for attr, label, marker in (
        ("h_norm", "median ‖$h_l$‖", "o"),
        ("g_norm_at_reference", f"median ‖$g_l$‖ at batch {report.thresholds.floor_batch_size}", "s"),
    ):
        points = [(row.index, getattr(row, attr)) for row in rows if _positive(getattr(row, attr))]
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, ys, marker=marker, markersize=_marker_size(rows), linewidth=1.5, label=label)
    floor = report.thresholds.grad_floor
    ax.axhline(floor, color="tab:red", linestyle="--", linewidth=1.2, label=f"floor {floor:.0e}")
    _layer_axis(ax, rows, "norm (log)", "signal per layer", which="major")
    ax.legend(fontsize="small", loc="best")


def _draw_gamma(ax: Axes, report: DiagnosticReport) -> None:
    rows = report.layers
    ax.set_ylim(-1.05, 1.05)
    _layer_axis(ax, rows, r"$\Gamma_l$ (mean cosine with BP)", "alignment per layer", axis="y")
    if all(row.gamma is None for row in rows):
        ax.text(
            0.5, 0.5, _no_gamma_note(report), transform=ax.transAxes, ha="center", va="center",
            wrap=True, fontsize="medium", color="dimgrey",
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "lightgrey"},
        )
        return
    ax.axhline(0.0, color="black", linewidth=0.6)
    _draw_null_band(ax, report)
    defined = [(row.index, row.gamma) for row in rows if row.gamma is not None]
    xs, ys = zip(*defined)
    ax.plot(
        xs, ys, marker="o", markersize=_marker_size(rows), linewidth=1.5, color="tab:green", label=r"$\Gamma_l$"
    )
    undefined = [row.index for row in rows if row.gamma is None]
    if undefined:
        size = _marker_size(rows)
        ax.plot(
            undefined, [0.0] * len(undefined), linestyle="none", marker="x", markersize=size + 3,
            markeredgewidth=size / 2.5, color="grey", label=r"$\Gamma_l$ undefined",
        )
    ax.legend(fontsize="small", loc="best")


def _draw_ablation(ax: Axes, report: DiagnosticReport) -> None:
    """Per state, the accuracy drop in pp with the block writing it removed and reset; a grey
    ``×`` at 0 where the drop is not defined or not available."""
    rows = report.layers[1:]
    _layer_axis(ax, report.layers, "accuracy drop (pp)", "which block learned", axis="y")
    ax.axhline(0.0, color="black", linewidth=0.6)
    for attr, label, offset, color in (("removed_drop_pp", "block removed", -0.2, "tab:purple"),
                                       ("reset_drop_pp", "block reset to init", 0.2, "tab:orange")):
        points = [(row.index + offset, getattr(row, attr)) for row in rows if getattr(row, attr) is not None]
        if points:
            xs, ys = zip(*points)
            ax.bar(xs, ys, width=0.4, color=color, label=label)
        missing = [row.index + offset for row in rows if getattr(row, attr) is None]
        if missing:
            ax.plot(missing, [0.0] * len(missing), linestyle="none", marker="x", color="grey")
    if report.ablation.get("status") != "ok":
        ax.text(0.5, 0.5, report.ablation.get("status", ""), transform=ax.transAxes, ha="center", va="center",
                wrap=True, fontsize="small", color="dimgrey")
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small", loc="best")


def _draw_null_band(ax: Axes, report: DiagnosticReport) -> None:
    """null_mean ± 2 null_std as one fill, each layer a block of width 0.8 around its index."""
    xs: list[float] = []
    lows: list[float] = []
    highs: list[float] = []
    present: list[bool] = []
    for row in report.layers:
        has = row.null_mean is not None and row.null_std is not None
        low, high = (row.null_mean - 2 * row.null_std, row.null_mean + 2 * row.null_std) if has else (0.0, 0.0)
        xs += [row.index - 0.4, row.index + 0.4]
        lows += [low, low]
        highs += [high, high]
        present += [has, has]
    if any(present):
        ax.fill_between(xs, lows, highs, where=present, color="grey", alpha=0.25, linewidth=0,
                        label=f"null ±2 sd (n={report.null_draws})")


def _layer_axis(ax: Axes, rows, ylabel: str, title: str, **grid) -> None:
    """The state axis (at most 12 ticks ``h_l``), the labels and a light grid."""
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize="medium")
    ax.grid(True, alpha=0.3, **grid)
    indices = [row.index for row in rows]
    if not indices:
        return
    step = max(1, math.ceil(len(indices) / 12))
    ticks = indices[::step]
    ax.set_xticks(ticks, [f"$h_{{{i}}}$" for i in ticks])
    ax.set_xlim(min(indices) - 0.5, max(indices) + 0.5)
    ax.set_xlabel("state $l$")


def _no_gamma_note(report: DiagnosticReport) -> str:
    status = report.credit_status or "Γ not measured"
    if status == "computed":
        reasons = sorted({row.gamma_status for row in report.layers if row.gamma_status})
        return "Γ undefined at every layer" + (f"\n{reasons[0]}" if len(reasons) == 1 else "")
    return f"Γ {status}" if not status.startswith("Γ") else status


def _marker_size(rows) -> float:
    return 5.0 if len(rows) <= 16 else 3.0


def _positive(value: float | None) -> bool:
    return value is not None and math.isfinite(value) and value > 0
