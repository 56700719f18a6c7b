"""One registry entry per diagnostic: a fifth one reaches the report, the verdict, the text,
Markdown and JSON reports, the summary table and the plugin's items without another edit."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import pytest_fa
from pytest_fa.core import registry
from pytest_fa.core.markdown import markdown_report
from pytest_fa.core.report import DiagnosticResult, summary_table
from pytest_fa.core.thresholds import DiagnosticThresholds, threshold_fields

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _eval_accuracy(measurement, thresholds) -> DiagnosticResult:
    """(e): accuracy on the eval batches, in points; fires below the threshold."""
    diagnostic = registry.get("e")
    value = 100.0 * measurement.probe.eval_accuracy
    threshold = diagnostic.threshold_value(thresholds)
    return DiagnosticResult("e", value, threshold, diagnostic.crosses(value, threshold),
                            detail=f"{measurement.probe.eval_correct} correct eval samples")


@contextmanager
def registered(diagnostic):
    """``diagnostic`` registered for the duration of a ``with`` block."""
    registry.register(diagnostic)
    try:
        yield diagnostic
    finally:
        registry.DIAGNOSTICS.remove(diagnostic)


EVAL_ACCURACY = registry.Diagnostic(
    "e", "eval accuracy", "eval_accuracy", "min_eval_acc_pp", False,
    "the model is at chance on the eval batches", _eval_accuracy,
    unit=" pp", what_to_do="train longer", column="(e) eval acc", column_format=".1f", default=101.0,
    statistic="eval_acc_pp",
)


def test_the_four_diagnostics_are_the_registry():
    assert [d.key for d in registry.DIAGNOSTICS] == ["a", "b", "c", "d"]
    assert registry.walk_back_keys() == ("a", "b", "d")
    fields = {f.name for f in threshold_fields()}
    assert all(d.threshold in fields for d in registry.DIAGNOSTICS)
    with pytest.raises(KeyError, match="no diagnostic 'z'"):
        registry.get("z")
    with pytest.raises(ValueError, match="exists"):
        registry.register(registry.DIAGNOSTICS[0])


def test_a_fifth_diagnostic_is_one_registry_entry(pytester, bp_bundle):
    x, y = torch.randn(1024, 40), torch.randint(0, 10, (1024,))
    model = pytest_fa.build_model("resmlp", input_shape=[40], num_classes=10, d=16, depth=2)
    with registered(EVAL_ACCURACY):
        report = pytest_fa.check(model, (x, y), frozen_acc=0.0, headline_acc=0.5)
        result = report.diagnostics["e"]
        assert result.value == pytest.approx(100.0 * report.eval_acc) and result.threshold == 101.0
        assert result.fires and "(e)" in report.verdict and not report.trustworthy
        assert "(e) eval accuracy" in str(report) and "the model is at chance" in str(report)
        assert report.to_dict()["diagnostics"]["e"]["name"] == "eval accuracy"
        assert "(e) eval acc" in summary_table([report]).splitlines()[0]
        assert "| (e) | eval accuracy |" in markdown_report([report])
        assert "What to do: train longer." in markdown_report([report])
        result = pytester.runpytest("-p", "no:cacheprovider", f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0")
        names = [r.nodeid.split("::")[-1] for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"]
        assert names == ["residual_growth", "grad_floor", "direction_stability", "frozen_margin", "eval_accuracy"]
        result.stdout.fnmatch_lines(["*(e) eval accuracy fires*(fires < 101 pp)*"])
    assert "e" not in pytest_fa.check(model, (x, y), frozen_acc=0.0).diagnostics


def test_a_fifth_diagnostic_reaches_the_seed_table_and_the_comparison():
    import copy

    from pytest_fa.core.compare import Kind, compare_reports
    from pytest_fa.core.seeds import SeedGroup, seed_columns, seed_table, statistic_names
    from pytest_fa.core.tolerance import figures, parse_fail_spec

    assert statistic_names() == ("headline_acc", "growth", "grad_ref", "margin_pp", "deep_gamma")
    assert seed_columns()[3:6] == ("(a) growth", "(b) ‖g_L‖", "(d) margin pp")
    x, y = torch.randn(1024, 40), torch.randint(0, 10, (1024,))
    model = pytest_fa.build_model("resmlp", input_shape=[40], num_classes=10, d=16, depth=2)
    with registered(EVAL_ACCURACY):
        reports = []
        for seed in (1, 2):
            report = pytest_fa.check(model, (x, y), frozen_acc=0.0, headline_acc=0.5)
            report.context.update(seed=seed, configuration='{"method": "bp"}')
            reports.append(report)
        group = SeedGroup({"method": "bp"}, reports)
        assert statistic_names()[-2] == "eval_acc_pp" and seed_columns()[-3] == "(e) eval acc pp"
        mean, sd, n = group.statistics()["eval_acc_pp"]
        assert mean == pytest.approx(100.0 * reports[0].eval_acc) and n == 2
        assert "(e) eval acc pp" in seed_table([group]).splitlines()[0]
        assert group.to_dict()["statistics"]["eval_acc_pp"]["n"] == 2
        new = reports[0].to_dict()
        old = copy.deepcopy(new)
        old["diagnostics"]["e"].update(fires=False, value=new["diagnostics"]["e"]["value"] + 5.0)
        assert list(figures())[-4:] == ["eval_acc_pp", "deep_gamma", "all_gamma", "layer_gamma"]
        assert figures()["eval_acc_pp"].description == "(e) eval accuracy" and figures()["eval_acc_pp"].worse == "down"
        comparison = compare_reports(old, new, [parse_fail_spec("eval_acc_pp:1")])
        assert [(c.figure, c.kind) for c in comparison.changes][:1] == [("eval_acc_pp", Kind.CROSSED)]
        assert comparison.failed and "eval_acc_pp" in comparison.figures
    assert "eval_acc_pp" not in statistic_names() and "eval_acc_pp" not in figures()
    assert DiagnosticThresholds().updated(max_growth=10).max_growth == 10
