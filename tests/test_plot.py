"""pytest_fa.core.plot: what the report figure draws, and the PNG files it writes."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from matplotlib.collections import PolyCollection
from matplotlib.image import imread

import pytest_fa
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.core.plot import (
    DPI,
    FIGSIZE,
    report_figure,
    safe_name,
    write_report_plots,
)
from pytest_fa.core.report import DiagnosticReport, DiagnosticResult, LayerRow
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.models import build_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
H_NORMS = [1.0, 5.0, 25.0, 100.0, 300.0]
G_NORMS = [1e-4, 1e-5, 3e-7, 1e-8, 1e-9]  # the last two below the 1e-7 floor
GAMMAS = [0.4, 0.2, 0.1, None, None]  # undefined where below the floor


def make_report(
    label: str = "dfa_s42.pt",
    h_norms=H_NORMS,
    g_norms=G_NORMS,
    gammas=GAMMAS,
    null: bool = True,
    credit_status: str = "computed",
) -> DiagnosticReport:
    rows = []
    for i, (h, g, gamma) in enumerate(zip(h_norms, g_norms, gammas)):
        has_null = null and gamma is not None
        rows.append(
            LayerRow(
                index=i,
                h_norm=h,
                growth=None if i == 0 or not h_norms[i - 1] else h / h_norms[i - 1],
                g_norm=g,
                g_norm_at_reference=g,
                gamma=gamma,
                gamma_status="ok" if gamma is not None else f"undefined: ‖g_{i}‖ below the floor",
                gamma_samples=1024 if gamma is not None else 0,
                gain=0.5,
                null_mean=0.0 if has_null else None,
                null_std=0.05 if has_null else None,
            )
        )
    thresholds = DiagnosticThresholds()
    diagnostics = {
        "a": DiagnosticResult("a", 3.0, thresholds.max_growth, False),
        "b": DiagnosticResult("b", g_norms[-1], thresholds.grad_floor, True, submode="Mode 1"),
        "c": DiagnosticResult("c", 0.1, thresholds.drift_ceiling, False),
        "d": DiagnosticResult("d", 5.0, thresholds.frozen_margin_pp, False),
    }
    return DiagnosticReport(
        label=label, layers=rows, diagnostics=diagnostics, thresholds=thresholds,
        batch_size=128, num_batches=8, dtype="float32", device="cpu", mode="eval",
        credit_status=credit_status, null_draws=20 if null else 0,
    )


def lines_with_y(ax, ys):
    return [line for line in ax.get_lines() if _same(line.get_ydata(), ys)]


def _same(data, expected) -> bool:
    data = [float(v) for v in data]
    return len(data) == len(expected) and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(data, expected))


def band(ax):
    return [c for c in ax.collections if isinstance(c, PolyCollection)]


def legend_texts(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


# -- the figure ---------------------------------------------------------------------------


def test_norm_panel_draws_the_medians_on_a_log_axis_against_the_floor():
    report = make_report()
    fig = report_figure(report)
    assert len(fig.axes) == 2
    left = fig.axes[0]
    assert left.get_yscale() == "log"
    floor = report.thresholds.grad_floor
    floor_lines = lines_with_y(left, [floor, floor])
    assert len(floor_lines) == 1 and floor_lines[0].get_linestyle() == "--"
    assert any("floor 1e-07" in t for t in legend_texts(left))
    (h_line,) = lines_with_y(left, H_NORMS)
    (g_line,) = lines_with_y(left, G_NORMS)
    assert list(h_line.get_xdata()) == list(g_line.get_xdata()) == [0, 1, 2, 3, 4]
    labels = [t.get_text() for t in left.get_xticklabels()]
    assert labels == [f"$h_{{{i}}}$" for i in range(5)]


def test_norm_panel_skips_values_a_log_axis_cannot_show():
    h = [1.0, 0.0, 25.0, 100.0, 300.0]
    g = [1e-4, float("nan"), -1.0, 1e-8, 0.0]
    fig = report_figure(make_report(h_norms=h, g_norms=g))
    left = fig.axes[0]
    (h_line,) = lines_with_y(left, [1.0, 25.0, 100.0, 300.0])
    assert list(h_line.get_xdata()) == [0, 2, 3, 4]
    (g_line,) = lines_with_y(left, [1e-4, 1e-8])
    assert list(g_line.get_xdata()) == [0, 3]


def test_gamma_panel_draws_gamma_the_null_band_and_marks_undefined_layers():
    report = make_report()
    fig = report_figure(report)
    right = fig.axes[1]
    low, high = right.get_ylim()
    assert low <= -1.0 and high >= 1.0 and (low, high) == pytest.approx((-1.05, 1.05))
    (gamma_line,) = lines_with_y(right, [0.4, 0.2, 0.1])
    assert list(gamma_line.get_xdata()) == [0, 1, 2]
    zero_lines = [line for line in lines_with_y(right, [0.0, 0.0]) if line.get_linestyle() == "-"]
    assert len(zero_lines) == 1 and list(zero_lines[0].get_xdata()) == [0, 1]  # axhline: axes coords
    marks = [line for line in right.get_lines() if line.get_marker() == "x"]
    assert len(marks) == 1 and list(marks[0].get_xdata()) == [3, 4]
    assert list(marks[0].get_ydata()) == [0.0, 0.0]
    texts = legend_texts(right)
    assert any("undefined" in t for t in texts)
    assert "null ±2 sd (n=20)" in texts
    (poly,) = band(right)
    ys = poly.get_paths()[0].vertices[:, 1]
    assert ys.min() == pytest.approx(-0.1) and ys.max() == pytest.approx(0.1)
    xs = poly.get_paths()[0].vertices[:, 0]
    assert xs.max() < 3  # no band over the layers without a null


def test_no_band_without_null_numbers():
    fig = report_figure(make_report(null=False))
    right = fig.axes[1]
    assert band(right) == []
    assert not any("null" in t for t in legend_texts(right))
    assert lines_with_y(right, [0.4, 0.2, 0.1])


def test_without_any_gamma_the_panel_states_why():
    status = "unavailable: no credit signal given"
    report = make_report(gammas=[None] * 5, null=False, credit_status=status)
    right = report_figure(report).axes[1]
    assert band(right) == []
    assert not [line for line in right.get_lines() if line.get_marker() == "x"]
    assert any(status in t.get_text() for t in right.texts)


def test_title_carries_label_and_verdict():
    report = make_report()
    assert report.verdict == "needs walk-back: (b: Mode 1)"
    title = report_figure(report).get_suptitle()
    assert title == "dfa_s42.pt — needs walk-back: (b: Mode 1)"
    assert report_figure(make_report(label="")).get_suptitle().startswith("checkpoint — ")


# -- the files ----------------------------------------------------------------------------


def test_write_report_plots_writes_a_png_of_the_figure_size(tmp_path):
    folder = tmp_path / "plots" / "nested"
    [path] = write_report_plots([make_report()], folder)
    assert path == folder / "dfa_s42.png" and path.is_file()
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    height, width = imread(path).shape[:2]
    expected_w, expected_h = FIGSIZE[0] * DPI, FIGSIZE[1] * DPI
    assert abs(width - expected_w) <= 0.05 * expected_w
    assert abs(height - expected_h) <= 0.05 * expected_h


@pytest.mark.parametrize(
    "label, name",
    [
        ("dfa_s42.pt", "dfa_s42"),
        ("", "checkpoint"),
        ("runs/dfa seed=1.pt", "runs_dfa_seed_1"),
        ("bp-v1.2", "bp-v1.2"),
        ("model.pt.bak", "model.pt.bak"),
        ("Γ", "_"),
        (".pt", "checkpoint"),
    ],
)
def test_safe_names(label, name):
    assert safe_name(label) == name


def test_empty_label_writes_checkpoint_png(tmp_path):
    assert write_report_plots([make_report(label="")], tmp_path)[0].name == "checkpoint.png"


def test_write_report_plots_deduplicates_names(tmp_path):
    reports = [make_report("a.pt"), make_report("a"), make_report("b"), make_report("a"), make_report("")]
    paths = write_report_plots(reports, tmp_path / "out")
    assert [p.name for p in paths] == ["a.png", "a-2.png", "b.png", "a-3.png", "checkpoint.png"]
    assert all(p.read_bytes()[:8] == PNG_SIGNATURE for p in paths)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in paths)


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, pytest_fa.core.plot; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- a real report ------------------------------------------------------------------------


def test_plot_of_a_real_report(tmp_path, one_torch_thread):
    torch.manual_seed(0)
    model = build_model("resmlp", input_shape=[40], num_classes=10, d=32, depth=3)
    credit = DFACredit(init_dfa_feedback(10, [32] * 4, torch.Generator().manual_seed(0)))
    x, y = torch.randn(1100, 40), torch.randint(0, 10, (1100,))
    report = pytest_fa.check(model, (x, y), frozen_acc=0.5, credit=credit, label="dfa_s42.pt")

    fig = report_figure(report)
    left, right = fig.axes
    assert lines_with_y(left, [row.h_norm for row in report.layers])
    assert lines_with_y(left, [row.g_norm_at_reference for row in report.layers])
    defined = [row.gamma for row in report.layers if row.gamma is not None]
    assert defined and lines_with_y(right, defined)
    assert report.null_draws > 0 and len(band(right)) == 1
    assert report.verdict in fig.get_suptitle()

    [path] = write_report_plots([report], tmp_path)
    assert path.name == "dfa_s42.png" and path.read_bytes()[:8] == PNG_SIGNATURE
