"""diagnose() and DiagnosticReport: verdict logic, Γ conventions, recorded conditions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from pytest_fa.core.credit import BPCredit, DFACredit
from pytest_fa.core.interface import per_sample
from pytest_fa.core.report import DiagnosticThresholds, diagnose
from pytest_fa.errors import DataError
from pytest_fa.training.data import eval_batches


@pytest.fixture(scope="module")
def batches(small_data):
    return eval_batches(small_data, 8, 128)


@pytest.fixture(scope="module")
def dfa(dfa_trained):
    return dfa_trained[0]


@pytest.fixture(scope="module")
def dfa_report(dfa, batches):
    return diagnose(
        dfa.model, batches, headline_acc=0.30, frozen_acc=0.35, credit=DFACredit(dfa.state.feedback), label="dfa"
    )


def test_report_records_the_conditions_of_measurement(dfa_report):
    r = dfa_report
    assert (r.batch_size, r.num_batches, r.dtype, r.mode, r.device) == (128, 8, "float32", "eval", "cpu")
    assert len(r.layers) == 5 and [row.index for row in r.layers] == list(range(5))
    assert r.layers[0].growth is None and all(row.growth > 0 for row in r.layers[1:])
    assert r.diagnostics["c"].layer == 2  # h_{L/2} with L = 4
    assert r.diagnostics["b"].layer == 4


def test_verdict_lists_exactly_the_walk_back_diagnostics_that_fire(dfa, batches):
    credit = DFACredit(dfa.state.feedback)
    strict = DiagnosticThresholds(max_growth=1.0, grad_floor=1e3, gain_floor=1e9, drift_ceiling=-0.99)
    r = diagnose(dfa.model, batches, headline_acc=0.5, frozen_acc=0.1, credit=credit, thresholds=strict)
    assert r.fired == ["a", "b"]
    assert r.verdict == "needs walk-back: (a), (b: Mode 1: backward gain collapsed)"
    paper = diagnose(
        dfa.model, batches, headline_acc=0.5, frozen_acc=0.1, credit=credit,
        thresholds=strict.updated(gain_floor=1e-30, b_rule="paper"),
    )
    assert paper.fired == ["a", "b"] and paper.diagnostics["b"].submode == "error-saturated"
    assert r.diagnostics["c"].fires and "drift-dominated" in r.diagnostics["c"].detail  # (c) never walks back
    lax = DiagnosticThresholds(max_growth=1e9, grad_floor=1e-30, frozen_margin_pp=-99)
    ok = diagnose(dfa.model, batches, headline_acc=0.5, frozen_acc=0.1, credit=credit, thresholds=lax)
    assert ok.trustworthy and ok.verdict == "trustworthy"


def test_missing_frozen_accuracy_never_reads_trustworthy(dfa, batches):
    lax = DiagnosticThresholds(max_growth=1e9, grad_floor=1e-30)
    r = diagnose(dfa.model, batches, headline_acc=0.5, thresholds=lax)
    assert not r.trustworthy
    assert r.verdict == "incomplete: (d) not evaluated"
    assert r.diagnostics["d"].fires is None and "not evaluated" in r.diagnostics["d"].detail


def test_gamma_is_undefined_below_the_floor_not_printed(dfa, batches):
    mode1 = DiagnosticThresholds(grad_floor=1e3, gain_floor=1e9)
    r = diagnose(dfa.model, batches, credit=DFACredit(dfa.state.feedback), thresholds=mode1)
    assert all(row.gamma is None and row.gamma_status.startswith("undefined") for row in r.layers)
    assert r.gamma_mean() is None
    assert "undefined" in str(r)
    paper = diagnose(dfa.model, batches, credit=DFACredit(dfa.state.feedback), thresholds=DiagnosticThresholds(grad_floor=1e3, b_rule="paper"))
    assert all(row.gamma is None for row in paper.layers)


def test_gamma_against_an_error_saturated_reference_stays_defined(dfa, batches):
    saturated = DiagnosticThresholds(grad_floor=1e3, gain_floor=1e-30)
    r = diagnose(dfa.model, batches, credit=DFACredit(dfa.state.feedback), thresholds=saturated)
    assert r.diagnostics["b"].submode == "error-saturated" and not r.diagnostics["b"].fires
    assert all(row.gamma is not None and "error-saturated" in row.gamma_status for row in r.layers)
    assert "(b) error-saturated" in str(r)


def test_gamma_without_a_credit_signal_is_unavailable_with_the_reason(dfa, batches):
    r = diagnose(dfa.model, batches, credit_unavailable="a plain state dict has no B")
    assert all(row.gamma is None for row in r.layers)
    assert r.credit_status == "unavailable: a plain state dict has no B"
    assert r.to_dict()["gamma"]["mean_all_layers"] is None


def test_bp_credit_aligns_perfectly_and_dfa_gamma_is_a_mean_of_per_sample_cosines(dfa, dfa_report, batches):
    model = dfa.model
    bp = diagnose(model, batches, credit=BPCredit(lambda t: per_sample(t, "vector")))
    assert all(row.gamma == pytest.approx(1.0, abs=1e-9) for row in bp.layers)
    # independent Γ_0 for DFA: per-sample cosine in float64 from autograd and e_T B_0
    cosines = []
    for x, y in batches:
        logits, hiddens = model(x, return_hidden=True)
        g0 = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, y), hiddens[0])[0].double()
        e = torch.softmax(logits.detach().double(), -1) - torch.nn.functional.one_hot(y, 10).double()
        a0 = e @ dfa.state.feedback[0].double()
        cosines.append((a0 * g0).sum(1) / (a0.norm(dim=1) * g0.norm(dim=1)))
    assert dfa_report.layers[0].gamma == pytest.approx(float(torch.cat(cosines).mean()), rel=1e-5)
    assert dfa_report.layers[0].gamma_samples == 1024


def test_floor_verdict_does_not_depend_on_the_eval_batch_size(small_data, dfa):
    samples = eval_batches(small_data, 8, 128)
    x = torch.cat([b[0] for b in samples])
    y = torch.cat([b[1] for b in samples])
    as_128 = [(x[i : i + 128], y[i : i + 128]) for i in range(0, 1024, 128)]
    as_64 = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 1024, 64)]
    r128 = diagnose(dfa.model, as_128)
    r64 = diagnose(dfa.model, as_64)
    assert r64.layers[-1].g_norm == pytest.approx(2 * r128.layers[-1].g_norm, rel=1e-5)
    assert r64.diagnostics["b"].value == pytest.approx(r128.diagnostics["b"].value, rel=1e-5)
    assert r64.to_dict()["measurement"]["batch_size"] == 64


def test_too_few_or_uneven_eval_batches_are_refused(dfa, batches):
    with pytest.raises(DataError, match="K ≥ 8"):
        diagnose(dfa.model, batches[:7])
    uneven = batches[:7] + [(batches[7][0][:100], batches[7][1][:100])]
    with pytest.raises(DataError, match="same size"):
        diagnose(dfa.model, uneven)


def test_diagnose_restores_the_training_mode(dfa, batches):
    model = dfa.model.train()
    diagnose(model, batches)
    assert model.training
    model.eval()


def test_report_serialises_to_json_and_renders_a_table(dfa_report):
    payload = json.loads(json.dumps(dfa_report.to_dict()))
    assert payload["verdict"] == dfa_report.verdict
    assert payload["measurement"]["samples"] == 1024
    assert payload["diagnostics"]["a"]["value"] == pytest.approx(dfa_report.diagnostics["a"].value)
    assert payload["thresholds"]["grad_floor"] == 1e-7
    text = str(dfa_report)
    for needle in ("h_0", "h_4", "‖g_l‖@128", "(a) residual growth", "(d) frozen-blocks margin", "VERDICT:"):
        assert needle in text
    assert payload["diagnostics"]["d"]["value"] == pytest.approx(-5.0)


def test_non_finite_values_become_null_in_json(dfa, batches):
    r = diagnose(dfa.model, batches)
    r.layers[0].h_norm = math.inf
    assert r.to_dict()["layers"][0]["h_norm"] is None


def test_thresholds_validate_and_update():
    t = DiagnosticThresholds()
    assert (t.max_growth, t.grad_floor, t.floor_batch_size, t.drift_ceiling, t.frozen_margin_pp) == (50.0, 1e-7, 128, 0.30, 2.0)
    assert t.updated(grad_floor=1e-6, max_growth=None).grad_floor == 1e-6
    with pytest.raises(TypeError, match="unknown threshold"):
        t.updated(floor=1)
    with pytest.raises(ValueError, match="finite"):
        DiagnosticThresholds(max_growth=float("nan"))
    with pytest.raises(ValueError, match="positive"):
        DiagnosticThresholds(grad_floor=0.0)


def test_half_precision_models_are_measured_in_float32(dfa, batches):
    half = __import__("copy").deepcopy(dfa.model).half()
    r = diagnose(half, batches)
    assert r.dtype == "float32 (weights stored in float16)"
    assert next(half.parameters()).dtype == torch.float16  # the user's model is untouched
    reference = diagnose(half.float(), batches)
    assert r.layers[-1].g_norm == pytest.approx(reference.layers[-1].g_norm, rel=1e-6)
    assert r.layers[-1].g_norm > 0


def test_a_report_rebuilt_from_its_json_is_the_same_report(dfa_report):
    import json

    from pytest_fa.core.report import DiagnosticReport

    data = json.loads(json.dumps(dfa_report.to_dict()))
    rebuilt = DiagnosticReport.from_dict(data)
    assert rebuilt.to_dict() == data
    assert str(rebuilt) == str(dfa_report)
    assert rebuilt.verdict == dfa_report.verdict and rebuilt.layers == dfa_report.layers


# -- only measured verdicts --------------------------------------------------------------------


LAX = DiagnosticThresholds(max_growth=1e9, grad_floor=1e-30)  # (a) and (b) pass: only (d) decides


def test_d_with_both_accuracies_at_the_ceiling_is_not_informative_not_a_walk_back(dfa, batches):
    r = diagnose(dfa.model, batches, headline_acc=1.0, frozen_acc=1.0, thresholds=LAX)
    d = r.diagnostics["d"]
    assert d.fires is None and d.value == 0.0 and d.submode == "not informative (both accuracies at the ceiling)"
    assert "trained 1.0000 − frozen 1.0000, both within 2 pp of 1.0" in d.detail
    assert "100·(1 − frozen) = 0.00 pp, so it cannot reach 2 pp" in d.detail
    assert r.fired == [] and not r.trustworthy
    assert r.verdict == "incomplete: (d) not informative (both accuracies at the ceiling)"
    lines = str(r).splitlines()
    assert "VERDICT: incomplete: (d) not informative (both accuracies at the ceiling)" in lines
    (row,) = [line for line in lines if line.startswith("(d)")]
    assert row.split() == ["(d)", "frozen-blocks", "margin", "0", "pp", "(fires", "<", "2", "pp)", "not", "informative",
                           "(both", "accuracies", "at", "the", "ceiling)"]
    from pytest_fa.core.markdown import markdown_report

    md = markdown_report([r])
    assert "| (d) | frozen-blocks margin | 0 pp (fires < 2 pp) | not evaluated | not informative (both accuracies at the ceiling) |" in md
    assert "- (d) not informative (both accuracies at the ceiling): trained 1.0000" in md
    assert "not evaluated: not informative" not in md


def test_d_is_still_judged_when_the_trained_model_falls_measurably_short_of_a_frozen_one_at_the_ceiling(dfa, batches):
    r = diagnose(dfa.model, batches, headline_acc=0.5, frozen_acc=0.995, thresholds=LAX)
    assert r.diagnostics["d"].fires is True and r.verdict == "needs walk-back: (d)"
    healthy = diagnose(dfa.model, batches, headline_acc=1.0, frozen_acc=0.97, thresholds=LAX)
    assert healthy.diagnostics["d"].fires is False and healthy.trustworthy


def test_a_ceiling_and_a_missing_diagnostic_are_both_named(dfa, batches):
    r = diagnose(dfa.model, batches, headline_acc=1.0, frozen_acc=1.0, thresholds=LAX)
    r.diagnostics["b"].fires = None
    assert r.verdict == "incomplete: (b) not evaluated; (d) not informative (both accuracies at the ceiling)"


@pytest.fixture(scope="module")
def probe(dfa, batches):
    from pytest_fa.core.probe import run_probe

    return run_probe(dfa.model, batches)


def test_with_the_sample_count_d_at_the_ceiling_states_the_rule_and_n_is_recorded(probe):
    from pytest_fa.core.report import DiagnosticReport, report_from_probe

    r = report_from_probe(probe, thresholds=LAX, headline_acc=1.0, frozen_acc=0.999, accuracy_samples=12000)
    d = r.diagnostics["d"]
    assert d.fires is None and d.submode == "not informative (both accuracies at the ceiling)"
    assert ("trained 1.0000 − frozen 0.9990 on n = 12000 samples: the Wilson lower bound (z = 2) of each error "
            "rate is below 2 pp (trained 0.00 pp, frozen 0.06 pp), so 12000 samples cannot show a 2 pp margin") in d.detail
    assert r.verdict == "incomplete: (d) not informative (both accuracies at the ceiling)"
    payload = json.loads(json.dumps(r.to_dict()))
    assert r.accuracy_samples == 12000 and payload["accuracy"]["samples"] == 12000
    rebuilt = DiagnosticReport.from_dict(payload)
    assert rebuilt.accuracy_samples == 12000 and rebuilt.to_dict() == payload
    assert report_from_probe(probe, thresholds=LAX, headline_acc=0.9).to_dict()["accuracy"]["samples"] is None


def test_fewer_samples_widen_the_ceiling_of_d(probe):
    from pytest_fa.core.report import report_from_probe

    def d(frozen, n, trained=1.0):
        return report_from_probe(probe, thresholds=LAX, headline_acc=trained, frozen_acc=frozen,
                                 accuracy_samples=n).diagnostics["d"]

    assert d(0.95, 12000).fires is False  # 5 pp of headroom is resolved on 12000 samples
    assert d(0.97, None).fires is False and d(0.97, 12000).fires is False
    few = d(0.97, 100)  # 3 errors in 100: the frozen error rate may be below 2 pp
    assert few.fires is None and few.not_informative and "(trained 0.00 pp, frozen 1.01 pp)" in few.detail
    assert d(0.995, 100, trained=0.5).fires is True  # 50 pp short of the frozen model: a measured shortfall
    with pytest.raises(DataError, match="n=0 samples: give the number of samples"):
        d(0.97, 0)


def test_check_and_the_runner_record_the_samples_their_accuracies_were_measured_on(dfa_trained, small_data):
    import pytest_fa
    from pytest_fa.core.settings import ProtocolSettings
    from pytest_fa.protocol import ProtocolRunner

    result, path = dfa_trained
    tensors = (small_data.x_test, small_data.y_test)
    assert pytest_fa.check(result.model, tensors, frozen_acc=0.0).accuracy_samples == len(small_data.y_test)
    assert pytest_fa.check(result.model, tensors, frozen_acc=0.0, headline_acc=0.5).accuracy_samples is None
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.1))
    assert runner.report(str(path)).accuracy_samples == len(small_data.y_test)


def test_a_nan_reference_gets_no_verdict_from_b_under_either_rule(dfa, batches):
    from pytest_fa.core.probe import run_probe
    from pytest_fa.core.report import report_from_probe

    probe = run_probe(dfa.model, batches)
    probe.grad_norms[-1] = torch.full_like(probe.grad_norms[-1], math.nan)
    for rule in ("decomposed", "paper"):
        r = report_from_probe(probe, thresholds=LAX.updated(b_rule=rule), headline_acc=0.9, frozen_acc=0.1)
        b = r.diagnostics["b"]
        assert b.fires is None and b.value is None, rule
        assert b.detail.startswith("not evaluated: the reference gradient norm ‖g_L‖ is NaN, which is not a measurement")
        assert r.verdict == "incomplete: (b) not evaluated"
    probe.logit_grad_norms = None  # no decomposition: the floor alone, the same rule
    assert report_from_probe(probe, thresholds=LAX, headline_acc=0.9, frozen_acc=0.1).diagnostics["b"].fires is None


@pytest.mark.parametrize("zeroed", ["h_0", "every state"])
def test_an_undefined_growth_or_stability_gets_no_verdict_and_the_report_still_serialises(probe, zeroed):
    """A median ‖h_l‖ of 0 made the growth inf or NaN, on which (a) fired; zero batch-mean
    gradients made the stability NaN, read as noise-dominated."""
    import copy

    from pytest_fa.assertions import assert_no_residual_explosion, assert_reference_not_drift
    from pytest_fa.core.markdown import markdown_report
    from pytest_fa.core.report import report_from_probe
    from pytest_fa.errors import NonFiniteError

    probe = copy.deepcopy(probe)
    for norms in probe.hidden_norms[:1] if zeroed == "h_0" else probe.hidden_norms:
        norms.zero_()
    probe.mid_batch_means.zero_()
    r = report_from_probe(probe, thresholds=LAX, headline_acc=0.9, frozen_acc=0.1)
    a, c = r.diagnostics["a"], r.diagnostics["c"]
    assert a.fires is None and a.value is None
    assert a.detail.startswith("not evaluated: a median ‖h_l‖ is 0: growth undefined at block 0")
    assert c.fires is None and c.value is None and c.submode == ""
    assert c.detail.startswith("not evaluated: 8 of 8 batch-mean reference gradients are exactly zero")
    assert r.fired == [] and r.verdict == "incomplete: (a) not evaluated"
    payload = json.loads(json.dumps(r.to_dict(), allow_nan=False))
    assert payload["not_evaluated"] == ["a"] and payload["diagnostics"]["a"]["fires"] is None
    md = markdown_report([r], "0")
    assert "- (a) not evaluated: a median ‖h_l‖ is 0: growth undefined" in md and "(a) residual growth" in str(r)
    with pytest.raises(NonFiniteError, match="growth undefined"):
        assert_no_residual_explosion(r)
    with pytest.raises(NonFiniteError, match=r"diagnostic \(c\) not evaluated: 8 of 8"):
        assert_reference_not_drift(r)


@pytest.mark.parametrize(("name", "value", "accepted"), [
    ("frozen_margin_pp", -100, "(-100, 100)"), ("frozen_margin_pp", 100, "(-100, 100)"),
    ("max_growth", 1e308, "(4.12e-84, 2.43e+83)"), ("max_growth", 1e-90, "(4.12e-84, 2.43e+83)"),
    ("gain_floor", 1e100, "(4.12e-84, 2.43e+83)"), ("gain_floor", 1e-90, "(4.12e-84, 2.43e+83)"),
    ("grad_floor", 1e-46, "(1.4e-45, 3.4e+38)"), ("grad_floor", 1e39, "(1.4e-45, 3.4e+38)"),
    ("drift_ceiling", 1.0, "(-1, 1)"),
])
def test_a_threshold_its_diagnostic_could_never_or_always_cross_is_refused(name, value, accepted):
    with pytest.raises(ValueError) as info:
        DiagnosticThresholds(**{name: value})
    message = str(info.value)
    assert message.startswith(f"setting `{name}={value:g}`: ")
    assert "makes its diagnostic always or never fire" in message and f"strictly inside {accepted}" in message


def test_thresholds_just_inside_the_ranges_are_accepted():
    DiagnosticThresholds(frozen_margin_pp=-99.9, max_growth=1e83, gain_floor=1e-83, grad_floor=1e-44, drift_ceiling=0.999)
    DiagnosticThresholds(frozen_margin_pp=99.9, grad_floor=1e38, gain_floor=1e83)


def test_a_zero_credit_is_named_as_the_cause_of_an_undefined_gamma(bp_trained, small_data):
    model = bp_trained[0].model
    report = diagnose(model, eval_batches(small_data, 8, 128, seed=0), credit=lambda x, y, logits, hiddens: [
        torch.zeros_like(h) for h in hiddens])
    assert all(row.gamma is None for row in report.layers)
    assert {row.gamma_status for row in report.layers} == {
        "undefined: the credit is zero at every sample; check the credit signal"}
    assert min(row.g_norm for row in report.layers) > report.thresholds.grad_floor  # not the floor
    text = str(report)
    layers = list(range(len(report.layers)))
    assert f"undefined at layers {layers}: the credit is zero at every sample; check the credit signal" in text
    assert "below the floor" not in text
