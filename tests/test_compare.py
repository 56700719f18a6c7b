"""Tests of ``pytest_fa.core.compare`` and ``pytest_fa.core.report_json``'s reading: a run against a
saved JSON report (``--fa-compare``).

Payloads are built here, modelled on a real ``--fa-report-json`` file of three checkpoints
(bp_s42.pt, dfa_s42.pt, dfa_s43.pt): tolerance parsing and its error paths, the units,
boundaries just inside and outside, threshold crossings both ways, None handling, matching
by label and by path, checkpoints missing from the saved report, payload validation, the
summary and table text, and a JSON round trip.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from pytest_fa import __version__
from pytest_fa.core.compare import CheckpointComparison, Kind, compare_reports, comparison_table, match_reports
from pytest_fa.core.report_json import READS_FROM, load_saved_report
from pytest_fa.core.tolerance import CompareError, Tolerance, figures, parse_fail_spec, parse_fail_specs
from pytest_fa.errors import FAError

THRESHOLDS = {
    "max_growth": 50.0, "grad_floor": 1e-07, "floor_batch_size": 128, "gain_floor": 0.001,
    "b_rule": "decomposed", "drift_ceiling": 0.3, "frozen_margin_pp": 2.0,
}
NAMES = {"a": "residual growth", "b": "gradient floor", "c": "direction stability", "d": "frozen-blocks margin"}


def diagnostic(key: str, value, fires, threshold: float, detail: str = "", submode: str = "") -> dict:
    return {"name": NAMES[key], "key": key, "value": value, "threshold": threshold, "fires": fires,
            "layer": None, "detail": detail, "submode": submode, "components": {}}


def make_report(
    label: str = "bp_s42.pt",
    checkpoint: str | None = "/tmp/sample/bp_s42.pt",
    *,
    headline=0.89475,
    frozen=0.45075,
    growth=1.2069707682937008,
    grad_ref=0.00022018570045044522,
    stability=-0.01378766555328703,
    gammas=(1.0, 1.0, 1.0, 1.0, 1.0),
    fires: dict | None = None,
    verdict: str | None = None,
) -> dict:
    """A report dict shaped like ``DiagnosticReport.to_dict()``; ``fires`` follows the
    thresholds unless overridden per key (None: not evaluated)."""
    margin = None if headline is None or frozen is None else 100.0 * (headline - frozen)
    computed = {
        "a": None if growth is None else growth > THRESHOLDS["max_growth"],
        "b": None if grad_ref is None else grad_ref < THRESHOLDS["grad_floor"],
        "c": None if stability is None else stability > THRESHOLDS["drift_ceiling"],
        "d": None if margin is None else margin < THRESHOLDS["frozen_margin_pp"],
    }
    computed.update(fires or {})
    fired = [k for k in "abd" if computed[k]]
    missing = [k for k in "abd" if computed[k] is None]
    if verdict is None:
        verdict = ("needs walk-back: " + ", ".join(f"({k})" for k in fired) if fired else
                   "incomplete: " + ", ".join(f"({k})" for k in missing) + " not evaluated" if missing
                   else "trustworthy")
    defined = [g for g in gammas if g is not None]
    deep = [g for g in gammas[1:] if g is not None]
    return {
        "label": label,
        "verdict": verdict,
        "trustworthy": verdict == "trustworthy",
        "fired": fired,
        "not_evaluated": missing,
        "measurement": {"batch_size": 128, "num_batches": 8, "samples": 1024, "dtype": "float32",
                        "device": "cpu", "mode": "eval", "loss": "batch-mean cross-entropy"},
        "thresholds": dict(THRESHOLDS),
        "diagnostics": {
            "a": diagnostic("a", growth, computed["a"], THRESHOLDS["max_growth"]),
            "b": diagnostic("b", grad_ref, computed["b"], THRESHOLDS["grad_floor"], submode="above the floor"),
            "c": diagnostic("c", stability, computed["c"], THRESHOLDS["drift_ceiling"]),
            "d": diagnostic("d", margin, computed["d"], THRESHOLDS["frozen_margin_pp"],
                            detail="not evaluated: no headline accuracy" if margin is None else ""),
        },
        "layers": [{"index": i, "h_norm": 8.0 + i, "growth": None if i == 0 else 1.1, "g_norm": 1e-3,
                    "g_norm_at_reference": 1e-3, "gamma": g, "gamma_status": "ok" if g is not None else "undefined",
                    "gamma_samples": 1024, "gain": 1.0, "null_mean": None, "null_std": None}
                   for i, g in enumerate(gammas)],
        "gamma": {"status": "computed", "null_draws": 0,
                  "mean_all_layers": sum(defined) / len(defined) if defined else None,
                  "mean_deep_layers": sum(deep) / len(deep) if deep else None},
        "accuracy": {"headline": headline, "frozen_baseline": frozen, "eval_batches": 0.89},
        "context": {"checkpoint": checkpoint, "method": label.split("_")[0], "seed": 42} if checkpoint
        else {"method": label.split("_")[0]},
    }


def sample_payload() -> dict:
    """The three checkpoints of the real sample, with its numbers."""
    return {
        "pytest_fa": "0.1.0",
        "reports": [
            make_report(),
            make_report("dfa_s42.pt", "/tmp/sample/dfa_s42.pt", headline=0.4339166666666667, frozen=0.45075,
                        growth=24.301695009829697, grad_ref=6.685958256480462e-05, stability=-0.046988147282718065,
                        gammas=(0.0333, 0.1858, 0.02926, 0.02165, 0.04411)),
            make_report("dfa_s43.pt", "/tmp/sample/dfa_s43.pt", headline=0.3953333333333333, frozen=0.45275,
                        growth=34.826822328633824, grad_ref=5.548823924704538e-05, stability=-0.05900057037277001,
                        gammas=(0.03, 0.2, 0.03, 0.03, 0.06)),
        ],
        "seed_groups": [],
    }


def payload(*reports: dict) -> dict:
    return {"pytest_fa": "0.1.0", "reports": list(reports), "seed_groups": []}


def one(old: dict, new: dict, tolerances=()) -> CheckpointComparison:
    return compare_reports(old, new, parse_fail_specs(tolerances))


def compare_all(old: dict, new: dict, tolerances=()) -> list[CheckpointComparison | None]:
    """What ``--fa-compare`` does: each report of ``new`` against its saved one in ``old``
    (None: not in the saved report, the plugin skips its compare item)."""
    tolerances = parse_fail_specs(tolerances)
    return [None if saved is None else compare_reports(saved, report, tolerances)
            for report, saved in match_reports(old["reports"], new["reports"])]


def failures(comparison: CheckpointComparison) -> list:
    return [c for c in comparison.changes if c.kind.fails]


def kinds(comparison: CheckpointComparison) -> list[tuple[str, Kind]]:
    return [(c.figure, c.kind) for c in comparison.changes]


# -- the sample payload is what we think it is ----------------------------------------------


def test_sample_payload_matches_the_real_verdicts():
    reports = sample_payload()["reports"]
    assert [r["verdict"] for r in reports] == ["trustworthy", "needs walk-back: (d)", "needs walk-back: (d)"]
    assert reports[1]["diagnostics"]["d"]["value"] == pytest.approx(-1.6833333333333311)
    assert reports[1]["gamma"]["mean_deep_layers"] == pytest.approx((0.1858 + 0.02926 + 0.02165 + 0.04411) / 4)


# -- parsing tolerance specs ----------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), [
    ("headline_acc:1pp", Tolerance("headline_acc", 1.0, "pp")),
    ("deep_gamma:0.05", Tolerance("deep_gamma", 0.05, "")),
    ("growth:20%", Tolerance("growth", 20.0, "%")),
    ("grad_ref:10x", Tolerance("grad_ref", 10.0, "x")),
    ("grad_ref:1x", Tolerance("grad_ref", 1.0, "x")),
    ("margin_pp:1.5pp", Tolerance("margin_pp", 1.5, "pp")),
    ("margin_pp:0", Tolerance("margin_pp", 0.0, "")),
    ("stability:.1", Tolerance("stability", 0.1, "")),
    ("all_gamma:1e-2", Tolerance("all_gamma", 0.01, "")),
    ("layer_gamma:0.1", Tolerance("layer_gamma", 0.1, "")),
    ("  Headline_ACC : 2 PP ", Tolerance("headline_acc", 2.0, "pp")),
    ("growth:5 %", Tolerance("growth", 5.0, "%")),
])
def test_parse_fail_spec_accepts(text, expected):
    assert parse_fail_spec(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("headline_acc", "with a colon"),
    ("headline_acc1pp", "with a colon"),
    ("acc:1pp", "unknown figure 'acc'"),
    (":1pp", "unknown figure ''"),
    ("min:5%", "unknown figure 'min'"),
    ("headline_acc:", "is not a non-negative number"),
    ("headline_acc:abc", "is not a non-negative number"),
    ("headline_acc:-1pp", "is not a non-negative number"),
    ("headline_acc:1ms", "is not a non-negative number"),
    ("headline_acc:1 pp pp", "is not a non-negative number"),
    ("headline_acc:inf", "is not a non-negative number"),
    ("headline_acc:nan", "is not a non-negative number"),
    ("headline_acc:1e999", "must be finite"),
    ("deep_gamma:1pp", "applies to headline_acc and margin_pp only"),
    ("growth:1pp", "applies to headline_acc and margin_pp only"),
    ("headline_acc:2x", "applies to growth and grad_ref only"),
    ("stability:2x", "applies to growth and grad_ref only"),
    ("grad_ref:0.5x", "a factor is at least 1"),
])
def test_parse_fail_spec_rejects(text, message):
    with pytest.raises(CompareError, match="tolerance") as info:
        parse_fail_spec(text)
    assert message in str(info.value)
    assert "e.g." in str(info.value)  # every message carries an example


def test_unknown_figure_lists_every_known_name_and_an_example():
    with pytest.raises(CompareError) as info:
        parse_fail_spec("accuracy:1pp")
    message = str(info.value)
    for name in figures():
        assert name in message
    assert "headline_acc:1pp" in message
    assert "worse down" in message and "worse up" in message


def test_parse_fail_spec_rejects_non_text():
    with pytest.raises(CompareError, match="not text"):
        parse_fail_spec(None)  # type: ignore[arg-type]


def test_compare_error_is_an_fa_error():
    assert issubclass(CompareError, FAError)


def test_parse_fail_specs_lists_commas_and_duplicates():
    assert parse_fail_specs(["headline_acc:1pp", "growth:20%, grad_ref:10x,"]) == (
        Tolerance("headline_acc", 1.0, "pp"), Tolerance("growth", 20.0, "%"), Tolerance("grad_ref", 10.0, "x"),
    )
    assert parse_fail_specs("deep_gamma:0.05") == (Tolerance("deep_gamma", 0.05, ""),)
    assert parse_fail_specs([]) == ()
    assert parse_fail_specs(" , ") == ()
    with pytest.raises(CompareError, match="given twice"):
        parse_fail_specs(["growth:20%", "growth:2x"])
    with pytest.raises(CompareError, match="unknown figure"):
        parse_fail_specs(["growth:20%", "speed:1"])


def test_tolerance_text_round_trips():
    for text in ("headline_acc:1pp", "growth:20%", "grad_ref:10x", "deep_gamma:0.05"):
        assert parse_fail_spec(text).text == text


# -- tolerance semantics: units and boundaries ------------------------------------------------


@pytest.mark.parametrize(("spec", "old", "new", "exceeded"), [
    # points on an accuracy fraction: 1pp = 0.01; exactly the tolerance passes
    ("headline_acc:1pp", 0.90, 0.89, False),
    ("headline_acc:1pp", 0.90, 0.8901, False),
    ("headline_acc:1pp", 0.90, 0.8899, True),
    ("headline_acc:1pp", 0.90, 0.99, False),          # up is better
    ("headline_acc:1pp", 0.10, 0.09, False),          # 0.10 - 0.01 < 0.09 in floats: still exact
    ("headline_acc:1pp", 0.07, 0.06, False),
    # a plain amount on an accuracy is a fraction: 0.01 = 1pp
    ("headline_acc:0.01", 0.90, 0.89, False),
    ("headline_acc:0.01", 0.90, 0.8899, True),
    ("headline_acc:1", 0.90, 0.0, False),             # 1.0 = 100 points
    # relative on an accuracy: 10% of 0.5 is 0.05
    ("headline_acc:10%", 0.50, 0.45, False),
    ("headline_acc:10%", 0.50, 0.4499, True),
    # margin_pp is already in points: pp and plain agree
    ("margin_pp:1pp", 10.0, 9.0, False),
    ("margin_pp:1pp", 10.0, 8.99, True),
    ("margin_pp:1", 10.0, 8.99, True),
    ("margin_pp:50%", -2.0, -3.0, False),             # relative to |old|
    ("margin_pp:50%", -2.0, -3.01, True),
    # absolute on Γ
    ("deep_gamma:0.05", 0.30, 0.25, False),
    ("deep_gamma:0.05", 0.30, 0.2499, True),
    ("deep_gamma:0.05", 0.30, 0.90, False),
    ("all_gamma:0", 0.30, 0.30, False),
    ("all_gamma:0", 0.30, 0.2999999, True),
    # growth: up is worse
    ("growth:20%", 10.0, 12.0, False),
    ("growth:20%", 10.0, 12.01, True),
    ("growth:20%", 10.0, 1.0, False),
    ("growth:2x", 5.0, 10.0, False),
    ("growth:2x", 5.0, 10.01, True),
    ("growth:1", 1.2, 2.2, False),
    ("growth:1", 1.2, 2.21, True),
    # grad_ref: down is worse, factors for its orders of magnitude
    ("grad_ref:10x", 1e-4, 1e-5, False),
    ("grad_ref:10x", 1e-4, 9.9e-6, True),
    ("grad_ref:10x", 1e-4, 0.0, True),
    ("grad_ref:10x", 1e-4, 1.0, False),
    ("grad_ref:50%", 1e-4, 5e-5, False),
    ("grad_ref:50%", 1e-4, 4.9e-5, True),
    # stability: a rise towards the drift ceiling is worse
    ("stability:0.1", -0.05, 0.05, False),
    ("stability:0.1", -0.05, 0.0501, True),
    ("stability:0.1", -0.05, -0.9, False),
    ("stability:50%", -0.2, -0.1, False),
    ("stability:50%", -0.2, -0.099, True),
    # a relative tolerance on an old value of 0: any move in the bad direction exceeds it
    ("stability:10%", 0.0, 1e-6, True),
    ("stability:10%", 0.0, 0.0, False),
    ("stability:10%", 0.0, -1.0, False),
])
def test_tolerance_boundaries(spec, old, new, exceeded):
    assert parse_fail_spec(spec).exceeded(old, new) is exceeded


def test_tolerance_with_none_is_never_exceeded():
    tolerance = parse_fail_spec("headline_acc:1pp")
    assert not tolerance.exceeded(None, 0.5)
    assert not tolerance.exceeded(0.5, None)
    assert not tolerance.exceeded(None, None)


def test_tolerance_describe_and_limit():
    assert parse_fail_spec("headline_acc:1pp").describe(0.9) == "a drop of at most 1pp (to 0.8900)"
    assert parse_fail_spec("growth:20%").describe(10.0) == "a rise of at most 20% of the old value (to 12)"
    assert parse_fail_spec("grad_ref:10x").describe(1e-4) == "at most 10× lower (to 1.00e-05)"
    assert parse_fail_spec("growth:2x").describe() == "at most 2× higher"
    assert parse_fail_spec("deep_gamma:0.05").limit(0.3) == pytest.approx(0.25)


# -- threshold crossings ------------------------------------------------------------------------


CROSS = {  # (figure, values that keep the diagnostic quiet, values that make it fire)
    "a": ("growth", {"growth": 24.3}, {"growth": 61.0}),
    "b": ("grad_ref", {"grad_ref": 2e-4}, {"grad_ref": 5e-9}),
    "c": ("stability", {"stability": -0.01}, {"stability": 0.45}),
    "d": ("margin_pp", {"headline": 0.89}, {"headline": 0.46}),
}


@pytest.mark.parametrize("key", sorted(CROSS))
def test_crossing_into_firing_fails(key):
    figure, quiet, firing = CROSS[key]
    comparison = one(make_report(**quiet), make_report(**firing))
    crossed = [c for c in comparison.changes if c.kind == Kind.CROSSED]
    assert [(c.figure, c.kind.fails) for c in crossed] == [(figure, True)]
    assert crossed[0].threshold == make_report()["diagnostics"][key]["threshold"]
    assert comparison.failed
    assert f"({key}: " in comparison.summary() and "crossed its threshold" in comparison.summary()


@pytest.mark.parametrize("key", sorted(CROSS))
def test_crossing_out_of_firing_is_shown_not_failing(key):
    figure, quiet, firing = CROSS[key]
    comparison = one(make_report(**firing), make_report(**quiet))
    assert (figure, Kind.CLEARED) in kinds(comparison)
    assert not comparison.failed
    assert "no longer fires" in comparison.summary()


def test_crossing_delta_and_message_show_the_numbers():
    comparison = one(make_report(growth=24.3), make_report(growth=61.0))
    change = next(c for c in comparison.changes if c.kind == Kind.CROSSED)
    assert (change.old, change.new) == (24.3, 61.0)
    assert "growth (a: residual growth) crossed its threshold, now fires: 24.3 → 61 (Δ +36.7); fires > 50" \
        in comparison.summary()


def test_evaluated_to_not_evaluated_fails():
    comparison = one(make_report(), make_report(headline=None))
    assert ("margin_pp", Kind.NOT_EVALUATED) in kinds(comparison)
    assert comparison.failed
    assert "was evaluated, now is not" in comparison.summary()
    assert "no headline accuracy" in comparison.summary()


def test_not_evaluated_to_evaluated_is_shown():
    comparison = one(make_report(headline=None), make_report())
    assert ("margin_pp", Kind.NOW_EVALUATED) in kinds(comparison)
    assert not comparison.failed


def test_not_evaluated_to_evaluated_and_firing_is_shown_with_a_note():
    comparison = one(make_report(headline=None), make_report(headline=0.46))
    change = next(c for c in comparison.changes if c.kind == Kind.NOW_EVALUATED)
    assert change.detail == "and fires" and not comparison.failed


def test_unchanged_fires_with_moved_values_give_no_change_without_tolerances():
    comparison = one(make_report(growth=2.0, headline=0.9), make_report(growth=40.0, headline=0.6))
    assert comparison.changes == []
    assert not comparison.failed
    assert comparison.summary() == "bp_s42.pt: no change against the saved report"


def test_verdict_change_is_shown_not_failing():
    comparison = one(make_report(), make_report(verdict="needs walk-back: (b: Mode 1)", fires={"b": False}))
    assert kinds(comparison) == [("verdict", Kind.VERDICT)]
    assert not comparison.failed
    assert "verdict: 'trustworthy' → 'needs walk-back: (b: Mode 1)'" in comparison.summary()


def test_threshold_changes_are_shown_not_failing():
    old, new = make_report(), make_report()
    new["thresholds"]["max_growth"] = 20.0
    new["thresholds"]["b_rule"] = "paper"
    comparison = one(old, new)
    changes = [(c.figure, c.old, c.new, c.kind) for c in comparison.changes]
    assert changes == [("threshold max_growth", 50.0, 20.0, Kind.THRESHOLD), ("threshold b_rule", "decomposed", "paper", Kind.THRESHOLD)]
    assert not comparison.failed
    last = comparison_table([comparison]).splitlines()[-1].split()
    assert last == ["bp_s42.pt", "threshold", "b_rule", "decomposed", "paper", "changed"]


# -- tolerances through a comparison -----------------------------------------------------------


def test_tolerance_just_inside_and_just_outside_through_compare():
    old = make_report(headline=0.90)
    inside = one(old, make_report(headline=0.89), ["headline_acc:1pp"])
    outside = one(old, make_report(headline=0.8899), ["headline_acc:1pp"])
    assert not inside.failed and inside.changes == []
    assert outside.failed
    change = failures(outside)[0]
    assert (change.figure, change.kind, change.tolerance) == ("headline_acc", Kind.BEYOND, Tolerance("headline_acc", 1.0, "pp"))
    assert change.new - change.old == pytest.approx(-0.0101)


def test_beyond_tolerance_summary_reads_like_an_assertion_message():
    comparison = one(make_report(headline=0.90), make_report(headline=0.88), ["headline_acc:1pp"])
    summary = comparison.summary()
    assert summary.splitlines()[0] == "bp_s42.pt: 1 regression against the saved report"
    assert ("headline_acc moved beyond its tolerance headline_acc:1pp: 0.9000 → 0.8800 (Δ -2.00pp); "
            "allowed: a drop of at most 1pp (to 0.8900)") in summary


def test_movement_in_the_good_direction_never_fails():
    old = make_report(headline=0.80, growth=30.0, grad_ref=1e-5, stability=0.2, gammas=(0.1,) * 5)
    new = make_report(headline=0.95, growth=1.1, grad_ref=1e-2, stability=-0.5, gammas=(0.9,) * 5)
    tolerances = ["headline_acc:0pp", "margin_pp:0", "growth:0%", "grad_ref:1x", "stability:0",
                  "deep_gamma:0", "all_gamma:0", "layer_gamma:0"]
    comparison = one(old, new, tolerances)
    assert not comparison.failed, comparison.summary()
    worse = one(new, old, tolerances)
    assert {c.figure for c in failures(worse) if c.kind == Kind.BEYOND} == {
        "headline_acc", "margin_pp", "growth", "grad_ref", "stability", "deep_gamma", "all_gamma",
        *(f"layer_gamma[{i}]" for i in range(5)),
    }


def test_tolerances_are_parsed_specs_or_tolerance_objects():
    old, new = make_report(growth=10.0), make_report(growth=13.0)
    for tolerances in (parse_fail_specs(["growth:20%"]), [Tolerance("growth", 20.0, "%")]):
        assert compare_reports(old, new, tolerances).failed, tolerances
    assert not compare_reports(old, new).failed


def test_layer_gamma_compares_each_layer():
    old = make_report(gammas=(0.5, 0.5, 0.5, 0.5, 0.5))
    new = make_report(gammas=(0.5, 0.45, 0.3, None, 0.9))
    comparison = one(old, new, ["layer_gamma:0.05"])
    assert [(c.figure, c.kind) for c in failures(comparison)] == [
        ("layer_gamma[2]", Kind.BEYOND), ("layer_gamma[3]", Kind.UNDEFINED),
    ]
    table = comparison_table([comparison])
    assert "layer_gamma[1]" in table and "layer_gamma[4]" in table
    assert "layer_gamma[0]" not in comparison_table([one(old, new)])  # only with a tolerance


def test_layer_gamma_with_a_changed_layer_count_fails():
    comparison = one(make_report(gammas=(0.5,) * 5), make_report(gammas=(0.5,) * 7), ["layer_gamma:0.1"])
    assert [(c.figure, c.old, c.new, c.kind) for c in failures(comparison)] == [("layer_gamma", 5, 7, Kind.LAYER_COUNT)]
    assert "FAIL: layer count" in comparison_table([comparison])
    assert not one(make_report(gammas=(0.5,) * 5), make_report(gammas=(0.5,) * 7)).failed


# -- None handling -----------------------------------------------------------------------------


def test_figure_with_a_tolerance_that_becomes_undefined_fails():
    comparison = one(make_report(gammas=(1.0, 0.5, 0.5, 0.5, 0.5)), make_report(gammas=(1.0, None, None, None, None)),
                     ["deep_gamma:0.05"])
    assert [(c.figure, c.kind) for c in failures(comparison)] == [("deep_gamma", Kind.UNDEFINED)]
    assert "deep_gamma became undefined: 0.5 → —" in comparison.summary()


def test_undefined_figure_without_a_tolerance_does_not_fail():
    assert not one(make_report(gammas=(1.0, 0.5, 0.5, 0.5, 0.5)), make_report(gammas=(1.0, None, None, None, None))).failed


def test_figure_undefined_before_is_not_compared():
    comparison = one(make_report(gammas=(None,) * 5), make_report(gammas=(0.1,) * 5), ["deep_gamma:0", "layer_gamma:0"])
    assert comparison.changes == []


def test_unevaluated_diagnostic_is_reported_once_not_also_as_undefined():
    comparison = one(make_report(), make_report(headline=None), ["margin_pp:1pp", "headline_acc:1pp"])
    assert [(c.figure, c.kind) for c in failures(comparison)] == [
        ("margin_pp", Kind.NOT_EVALUATED), ("headline_acc", Kind.UNDEFINED),
    ]


def test_nan_and_junk_values_read_as_none():
    old = make_report()
    new = make_report()
    new["accuracy"]["headline"] = float("nan")
    new["diagnostics"]["a"]["value"] = "61"
    new["diagnostics"]["b"]["value"] = True
    new["gamma"] = "computed"
    new["layers"] = None
    text = json.dumps(payload(new))  # NaN is written as NaN and read back as float nan
    comparison = one(old, json.loads(text)["reports"][0], ["headline_acc:1pp", "growth:1", "grad_ref:10x",
                                                           "deep_gamma:0", "layer_gamma:0"])
    assert comparison.figures["headline_acc"] == (pytest.approx(0.89475), None)
    assert comparison.figures["growth"][1] is None
    assert comparison.figures["grad_ref"][1] is None
    assert comparison.figures["deep_gamma"][1] is None
    assert {c.figure for c in failures(comparison)} == {"headline_acc", "growth", "grad_ref", "deep_gamma", "layer_gamma"}
    comparison_table([comparison])  # renders
    comparison.summary()


def test_report_without_some_diagnostics_accuracy_or_verdict_compares():
    sparse = {"label": "bp_s42.pt", "diagnostics": {}}
    for old, new in ((sparse, sparse), (sparse, make_report()), (make_report(), sparse)):
        comparison = one(old, new, ["headline_acc:1pp", "layer_gamma:0.1"])
        table = comparison_table([comparison])
        summary = comparison.summary()
        assert table and summary
    assert one(sparse, sparse).changes == []
    lost = one(make_report(), sparse)
    assert {(c.figure, c.kind) for c in failures(lost)} == {
        (figure, Kind.NOT_EVALUATED) for figure in ("growth", "grad_ref", "stability", "margin_pp")
    }
    assert ("verdict", Kind.VERDICT) in kinds(lost)


def test_none_values_in_the_table_are_dashes():
    comparison = one(make_report(headline=None, gammas=(None,) * 5), make_report(headline=None, gammas=(None,) * 5))
    rows = {line.split()[1]: line for line in comparison_table([comparison]).splitlines()[2:]}
    assert rows["headline_acc"].split()[2:4] == ["—", "—"]
    assert rows["deep_gamma"].split()[2:] == ["—", "—", "ok"]


def test_which_kinds_of_change_fail():
    assert [kind for kind in Kind if kind.fails] == [
        Kind.CROSSED, Kind.NOT_EVALUATED, Kind.BEYOND, Kind.UNDEFINED, Kind.LAYER_COUNT]


# -- matching checkpoints ----------------------------------------------------------------------


def test_matching_by_label_when_the_checkpoint_moved():
    old = sample_payload()
    new = sample_payload()
    for report in new["reports"]:
        report["context"]["checkpoint"] = "/elsewhere/" + report["label"]
    new["reports"].reverse()
    new["reports"][0]["accuracy"]["headline"] = 0.30  # dfa_s43.pt
    comparisons = compare_all(old, new, ["headline_acc:1pp"])
    assert [c.label for c in comparisons] == ["dfa_s43.pt", "dfa_s42.pt", "bp_s42.pt"]
    assert [c.failed for c in comparisons] == [True, False, False]
    assert [saved["label"] for _, saved in match_reports(old["reports"], new["reports"])] == [
        "dfa_s43.pt", "dfa_s42.pt", "bp_s42.pt"]


def test_duplicate_labels_are_told_apart_by_path():
    old = payload(make_report("model.pt", "/runs/a/model.pt", headline=0.90),
                  make_report("model.pt", "/runs/b/model.pt", headline=0.60))
    new = payload(make_report("model.pt", "/runs/b/model.pt", headline=0.60),
                  make_report("model.pt", "/runs/./a//model.pt", headline=0.89))
    pairs = match_reports(old["reports"], new["reports"])
    assert [(report["context"]["checkpoint"], saved["context"]["checkpoint"]) for report, saved in pairs] == [
        ("/runs/b/model.pt", "/runs/b/model.pt"), ("/runs/./a//model.pt", "/runs/a/model.pt"),
    ]
    assert [c.failed for c in compare_all(old, new, ["headline_acc:2pp"])] == [False, False]
    # matched by label alone, /runs/b (0.60) against /runs/a (0.90) would have failed
    swapped = compare_all(old, payload(make_report("model.pt", "/runs/b/model.pt", headline=0.60),
                                       make_report("model.pt", "/runs/c/model.pt", headline=0.6)),
                          ["headline_acc:2pp"])
    assert [c and c.failed for c in swapped] == [False, None]


def test_label_unique_in_old_but_shared_in_new_matches_by_path():
    old = payload(make_report("model.pt", "/runs/a/model.pt", headline=0.90))
    new = payload(make_report("model.pt", "/runs/a/model.pt", headline=0.90),
                  make_report("model.pt", "/runs/b/model.pt", headline=0.10))
    comparisons = compare_all(old, new, ["headline_acc:1pp"])
    assert [c and c.failed for c in comparisons] == [False, None]


def test_match_reports_pairs():
    a, b = make_report("a.pt", "/x/a.pt"), make_report("b.pt", "/x/b.pt")
    pairs = match_reports([a], [b, a])
    assert pairs == [(b, None), (a, a)]


def test_checkpoint_missing_from_the_saved_report_has_no_pair():
    old = payload(make_report())
    new = payload(make_report(), make_report("dfa_s44.pt", "/tmp/sample/dfa_s44.pt", headline=0.1))
    assert [saved for _, saved in match_reports(old["reports"], new["reports"])] == [old["reports"][0], None]


def test_checkpoints_only_in_the_saved_report_are_ignored():
    comparisons = compare_all(sample_payload(), payload(make_report()))
    assert [c.label for c in comparisons] == ["bp_s42.pt"]


def test_the_run_may_hold_a_checkpoint_twice():
    comparisons = compare_all(payload(make_report()), payload(make_report(), make_report(headline=0.5)),
                              ["headline_acc:1pp"])
    assert [c.failed for c in comparisons] == [False, True]


# -- validating payloads -----------------------------------------------------------------------


def write(tmp_path, content, name="old.json"):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def test_load_missing_file(tmp_path):
    with pytest.raises(CompareError, match="no such file; give a JSON file written by a previous run with setting `report_json=PATH`"):
        load_saved_report(tmp_path / "absent.json")


def test_load_folder(tmp_path):
    with pytest.raises(CompareError, match="is a folder; give the JSON file inside it"):
        load_saved_report(tmp_path)


@pytest.mark.parametrize("content", ["{not json", "", "reports: []", b"\xff\xfe\x00binary"])
def test_load_not_json(tmp_path, content):
    with pytest.raises(CompareError, match="is not JSON") as info:
        load_saved_report(write(tmp_path, content))
    assert "setting `report_json=PATH`" in str(info.value)


@pytest.mark.parametrize(("content", "message"), [
    ([1, 2, 3], "top level is a list"),
    ("3", "top level is a int"),
    ({"pytest_fa": "0.1.0"}, "no \"reports\" list (top-level keys: pytest_fa)"),
    ({"reports": {"a": 1}}, "no \"reports\" list"),
    ({"benchmarks": [], "machine_info": {}}, "looks like a pytest-benchmark file"),
    ({"reports": [{"label": "a.pt"}]}, "reports[0] has no \"label\""),
    ({"reports": [make_report(), {"diagnostics": {}}]}, "reports[1] has no \"label\""),
    ({"reports": [{"label": 3, "diagnostics": {}}]}, "reports[0] has no \"label\""),
    ({"reports": [{"label": "a.pt", "diagnostics": []}]}, "reports[0] has no \"label\""),
    ({"reports": ["a.pt"]}, "reports[0] has no \"label\""),
])
def test_load_json_that_is_not_a_report(tmp_path, content, message):
    with pytest.raises(CompareError, match="not a pytest-fa report") as info:
        load_saved_report(write(tmp_path, content))
    assert message in str(info.value)


def test_load_duplicate_checkpoint_paths(tmp_path):
    content = payload(make_report(), make_report("bp_s42.pt", "/tmp/sample/./bp_s42.pt"))
    with pytest.raises(CompareError, match=r"holds checkpoint /tmp/sample/bp_s42.pt twice \(reports\[0\] and reports\[1\]\)"):
        load_saved_report(write(tmp_path, content))


def test_load_duplicate_labels_without_paths(tmp_path):
    content = payload(make_report(checkpoint=None), make_report(checkpoint=None))
    with pytest.raises(CompareError, match="holds checkpoint bp_s42.pt twice") as info:
        load_saved_report(write(tmp_path, content))
    assert "diagnoses each checkpoint once" in str(info.value)


def test_shared_labels_with_distinct_paths_are_valid(tmp_path):
    content = payload(make_report("m.pt", "/a/m.pt"), make_report("m.pt", "/b/m.pt"), make_report("m.pt", None))
    assert len(load_saved_report(write(tmp_path, content))["reports"]) == 3


def test_load_empty_reports(tmp_path):
    with pytest.raises(CompareError, match="holds no reports"):
        load_saved_report(write(tmp_path, payload()))


def _version_after(version: str, minor: int = 1) -> str:
    major, rest = version.split(".", 1)
    return f"{major}.{int(rest.split('.')[0]) + minor}.0"


@pytest.mark.parametrize(("declared", "message"), [
    ("99.0.0", f"was written by pytest-fa 99.0.0, this is {__version__}; re-save it with this version "
               "(setting `report_json=PATH`)"),
    (_version_after(__version__), f"was written by pytest-fa {_version_after(__version__)}, this is {__version__}"),
    ("0.0.9", f"was written by pytest-fa 0.0.9, whose reports this version ({__version__}) does not read"),
    ("latest", "declares the pytest-fa version 'latest', which is no version; re-save it with this version"),
    (3, "declares the pytest-fa version 3, which is no version"),
])
def test_load_refuses_a_report_written_by_a_version_this_one_does_not_read(tmp_path, declared, message):
    assert READS_FROM > (0, 0)
    content = {**sample_payload(), "pytest_fa": declared}
    with pytest.raises(CompareError) as info:
        load_saved_report(write(tmp_path, content))
    assert message in str(info.value)


def test_load_refuses_a_newer_version_before_reading_its_layout(tmp_path):
    with pytest.raises(CompareError, match="written by pytest-fa 99.0.0, this is"):
        load_saved_report(write(tmp_path, {"pytest_fa": "99.0.0", "runs": []}))


def test_load_refuses_a_report_that_declares_no_version(tmp_path):
    content = sample_payload()
    del content["pytest_fa"]
    with pytest.raises(CompareError, match='declares no "pytest_fa" version, so this version cannot tell whether it reads it'):
        load_saved_report(write(tmp_path, content))


def test_load_reads_a_later_patch_of_this_version(tmp_path):
    patch = ".".join(__version__.split(".")[:2]) + ".99"
    assert load_saved_report(write(tmp_path, {**sample_payload(), "pytest_fa": patch}))["pytest_fa"] == patch


def _broken(index: int, change) -> dict:
    content = sample_payload()
    change(content["reports"][index]["diagnostics"])
    return content


@pytest.mark.parametrize(("index", "change", "message"), [
    (0, lambda d: d.clear(), 'reports[0] (bp_s42.pt) has no diagnostic (d) frozen-blocks margin in "diagnostics"'),
    (1, lambda d: d.pop("a"), 'reports[1] (dfa_s42.pt) has no diagnostic (a) residual growth in "diagnostics"'),
    (0, lambda d: d.update(c="ok"), "reports[0] (bp_s42.pt) has no diagnostic (c) direction stability"),
    (0, lambda d: d["b"].pop("fires"),
     'reports[0] (bp_s42.pt): diagnostic (b) gradient floor: "fires" is missing, not true, false or null (not evaluated)'),
    (2, lambda d: d["d"].update(fires="yes"), 'reports[2] (dfa_s43.pt): diagnostic (d) frozen-blocks margin: "fires" is \'yes\''),
    (0, lambda d: d["a"].update(fires=1), '(a) residual growth: "fires" is 1, not true, false or null'),
    (0, lambda d: d["a"].pop("value"), '(a) residual growth: "value" is missing, not a number or null'),
    (0, lambda d: d["a"].update(value="61"), '(a) residual growth: "value" is \'61\', not a number or null'),
    (0, lambda d: d["b"].update(value=True), '(b) gradient floor: "value" is True, not a number or null'),
], ids=["empty", "one-missing", "not-an-object", "no-fires", "fires-text", "fires-number", "no-value",
        "value-text", "value-bool"])
def test_load_refuses_a_report_without_a_diagnostic_or_a_field_compare_reads(tmp_path, index, change, message):
    """Before, each of these compared as "not evaluated" or "undefined" before, so the saved
    report could not fail a crossing or a tolerance."""
    with pytest.raises(CompareError) as info:
        load_saved_report(write(tmp_path, _broken(index, change)))
    assert message in str(info.value) and "setting `report_json=PATH`" in str(info.value)


def test_load_accepts_diagnostics_not_evaluated_or_undefined(tmp_path):
    content = _broken(0, lambda d: (d["d"].update(fires=None, value=None), d["a"].update(value=None)))
    assert load_saved_report(write(tmp_path, content)) == content


# -- round trip and text -----------------------------------------------------------------------


def test_round_trip_through_a_saved_file(tmp_path):
    saved = sample_payload()
    path = write(tmp_path, json.dumps(saved, indent=2, ensure_ascii=False))
    old = load_saved_report(path)
    assert old == saved
    same = compare_all(old, copy.deepcopy(saved), ["headline_acc:1pp,growth:20%,grad_ref:10x"])
    assert [c.label for c in same] == ["bp_s42.pt", "dfa_s42.pt", "dfa_s43.pt"]
    assert all(c.changes == [] and not c.failed for c in same)
    table = comparison_table(same).splitlines()
    assert table[0].split() == ["checkpoint", "figure", "old", "new", "change", "status"]
    assert set(table[1]) <= {"-", " "}
    assert len(table) == 2 + 3 * (len(figures()) - 1)  # every figure but layer_gamma

    run = copy.deepcopy(saved)
    dfa = run["reports"][1]
    dfa["accuracy"]["headline"] = 0.40
    dfa["diagnostics"]["a"].update(value=61.0, fires=True)
    dfa["verdict"] = "needs walk-back: (a), (d)"
    comparisons = compare_all(old, run, ["headline_acc:1pp,growth:20%"])
    assert [c.failed for c in comparisons] == [False, True, False]
    assert [(c.figure, c.kind) for c in comparisons[1].changes] == [
        ("growth", Kind.CROSSED), ("headline_acc", Kind.BEYOND), ("growth", Kind.BEYOND), ("verdict", Kind.VERDICT),
    ]
    message = "\n\n".join(c.summary() for c in comparisons if c.failed)
    assert message.startswith("dfa_s42.pt: 3 regressions against the saved report\n")
    assert "0.4339 → 0.4000 (Δ -3.39pp)" in message
    assert "24.3 → 61 (Δ +36.7)" in message
    assert "also changed:\n    verdict: 'needs walk-back: (d)' → 'needs walk-back: (a), (d)'" in message
    assert "bp_s42.pt" not in message

    rows = {tuple(line.split()[:2]): line for line in comparison_table(comparisons).splitlines()[2:]}
    assert rows[("dfa_s42.pt", "growth")].split()[2:] == ["24.3", "61", "+36.7", "FAIL:", "crossed,", "beyond", "tolerance"]
    assert rows[("dfa_s42.pt", "headline_acc")].split()[2:] == ["0.4339", "0.4000", "-3.39pp", "FAIL:", "beyond", "tolerance"]
    assert rows[("dfa_s42.pt", "grad_ref")].split()[2:] == ["6.69e-05", "6.69e-05", "×1", "ok"]
    assert rows[("dfa_s42.pt", "margin_pp")].split()[2:] == ["-1.683", "-1.683", "+0.00pp", "ok"]
    assert rows[("bp_s42.pt", "growth")].split()[-2:] == ["ok", "(20%)"]
    assert ("dfa_s42.pt", "verdict") in rows and ("bp_s42.pt", "verdict") not in rows


def test_table_change_column_formats():
    old = make_report(headline=0.90, grad_ref=1e-4, growth=10.0, gammas=(1.0, 0.5, 0.5, 0.5, 0.5))
    new = make_report(headline=0.8842, grad_ref=3.1e-5, growth=12.5, gammas=(1.0, 0.4, 0.4, 0.4, 0.4))
    rows = {line.split()[1]: line.split() for line in comparison_table([one(old, new)]).splitlines()[2:]}
    assert rows["headline_acc"][2:5] == ["0.9000", "0.8842", "-1.58pp"]
    assert rows["grad_ref"][2:5] == ["1.00e-04", "3.10e-05", "×0.31"]
    assert rows["growth"][2:5] == ["10", "12.5", "+2.5"]
    assert rows["deep_gamma"][2:5] == ["0.5", "0.4", "-0.1"]


def test_compare_reports_directly():
    comparison = compare_reports(make_report(growth=10.0), make_report(growth=13.0), parse_fail_specs("growth:20%"))
    assert comparison.label == "bp_s42.pt" and comparison.failed
    assert comparison.tolerances == {"growth": Tolerance("growth", 20.0, "%")}


def test_import_needs_neither_torch_nor_pytest():
    code = ("import sys, pytest_fa.core.compare; "
            "assert 'torch' not in sys.modules and 'pytest' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
