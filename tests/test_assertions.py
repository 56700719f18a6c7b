"""Tests for pytest_fa.assertions: each assertion on reports and on raw tensors.

Every failing case checks that the message carries the measured value, the threshold, the
layer or block and the meaning of the diagnostic, and every threshold argument is checked to
override the one a report carries. Expected values are computed here from the inputs, never
copied from a run.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_fa.assertions import (
    assert_beats_frozen,
    assert_grad_above_floor,
    assert_no_residual_explosion,
    assert_reference_not_drift,
    assert_trustworthy,
)
from pytest_fa.core.credit import DFACredit
from pytest_fa.core import registry
from pytest_fa.core.report import DiagnosticReport, diagnose
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.training.data import eval_batches

DEFAULTS = DiagnosticThresholds()
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The models here are tiny: on a 2-core machine under load, torch's second OpenMP thread
    turns each small matmul into a spin-wait (100× slower), so run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# A tiny model whose residual growth is known exactly: block l returns (s_l - 1) h, so
# h_{l+1} = s_l h_l and every per-sample norm grows by exactly s_l.
# --------------------------------------------------------------------------------------------


class ScaleBlock(nn.Module):
    def __init__(self, scale: float) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.scale - 1.0) * h


class ScaleNet(nn.Module):
    def __init__(self, scales, d_in: int = 6, d: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(ScaleBlock(s) for s in scales)
        self.out_ln = nn.LayerNorm(d)
        self.out_head = nn.Linear(d, classes)

    def forward(self, x, return_hidden: bool = False):
        h = self.embed(x)
        hiddens = [h]
        for block in self.blocks:
            h = h + block(h)
            hiddens.append(h)
        logits = self.out_head(self.out_ln(h))
        return (logits, hiddens) if return_hidden else logits


def tiny_batches(k: int = 8, b: int = 16, d_in: int = 6, classes: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(b, d_in, generator=gen, dtype=torch.float64), torch.randint(0, classes, (b,), generator=gen))
        for _ in range(k)
    ]


def tiny_report(scales, *, headline=0.9, frozen=0.5, thresholds=None, seed=0, samples=None) -> DiagnosticReport:
    torch.manual_seed(seed)
    model = ScaleNet(scales).double()
    return diagnose(model, tiny_batches(seed=seed), headline_acc=headline, frozen_acc=frozen, thresholds=thresholds,
                    accuracy_samples=samples)


@pytest.fixture(scope="module")
def healthy_tiny() -> DiagnosticReport:
    return tiny_report([1.5, 2.0, 1.25, 1.1])


@pytest.fixture(scope="module")
def exploding_tiny() -> DiagnosticReport:
    # growth 1e3 at block 2, ‖h_L‖ ~ 1e12 ‖h_0‖ behind a LayerNorm: g_L ~ 1e-12 of healthy
    return tiny_report([1e3, 1e3, 1e4, 1e2, 1e2])


# --------------------------------------------------------------------------------------------
# Reports on the conftest bundles' trained models
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_batches(small_data):
    return eval_batches(small_data, 8, 128, seed=0)


@pytest.fixture(scope="module")
def bp_report(bp_trained, small_batches) -> DiagnosticReport:
    result, _ = bp_trained
    return diagnose(result.model, small_batches, headline_acc=result.bundle.headline_acc, frozen_acc=0.0)


@pytest.fixture(scope="module")
def dfa_report(dfa_trained, small_batches) -> DiagnosticReport:
    result, _ = dfa_trained
    return diagnose(
        result.model,
        small_batches,
        headline_acc=result.bundle.headline_acc,
        credit=DFACredit(result.state.feedback),
    )


def assert_meaning(message: str, key: str) -> None:
    assert registry.get(key).meaning in message, message


def g4(x: float) -> str:
    return f"{x:.4g}"


# ============================================================================================
# (a) assert_no_residual_explosion
# ============================================================================================


def test_growth_passes_on_healthy_report(healthy_tiny):
    assert not healthy_tiny.diagnostics["a"].fires
    assert_no_residual_explosion(healthy_tiny)


def test_growth_fails_on_exploding_report_with_value_threshold_block_and_meaning(exploding_tiny):
    with pytest.raises(AssertionError) as info:
        assert_no_residual_explosion(exploding_tiny)
    message = str(info.value)
    # built with growth 1e4 at block 2 (‖h_3‖/‖h_2‖)
    assert "1e+04×" in message
    assert "block 2" in message and "‖h_3‖ / ‖h_2‖" in message
    assert f"Threshold: {DEFAULTS.max_growth:g}×" in message
    assert_meaning(message, "a")


def test_growth_on_report_agrees_with_report_diagnostic(bp_report, dfa_report, healthy_tiny, exploding_tiny):
    for report in (bp_report, dfa_report, healthy_tiny, exploding_tiny):
        fires = report.diagnostics["a"].fires
        if fires:
            with pytest.raises(AssertionError):
                assert_no_residual_explosion(report)
        else:
            assert_no_residual_explosion(report)


def test_growth_explicit_threshold_overrides_report(bp_report, exploding_tiny):
    growth = bp_report.diagnostics["a"].value
    block = bp_report.diagnostics["a"].layer
    assert_no_residual_explosion(bp_report)
    with pytest.raises(AssertionError) as info:
        assert_no_residual_explosion(bp_report, max_growth=growth / 2)
    message = str(info.value)
    assert g4(growth) in message and f"block {block}" in message
    assert f"Threshold: {growth / 2:g}×" in message
    # and the other way: a loose explicit threshold passes a report whose own threshold fires
    assert_no_residual_explosion(exploding_tiny, max_growth=1e5)
    strict = tiny_report([1.5, 2.0], thresholds=DiagnosticThresholds(max_growth=1.01))
    with pytest.raises(AssertionError):
        assert_no_residual_explosion(strict)
    assert_no_residual_explosion(strict, max_growth=2.5)


def test_growth_raw_tensors_default_threshold():
    gen = torch.Generator().manual_seed(1)
    h0 = torch.randn(32, 16, generator=gen)
    assert_no_residual_explosion([h0, 3 * h0, 6 * h0])  # growth 3 < 50
    with pytest.raises(AssertionError) as info:
        assert_no_residual_explosion([h0, 2 * h0, 200 * h0])  # growth 100 at block 1
    message = str(info.value)
    assert "100×" in message and "block 1" in message and "Threshold: 50×" in message
    assert_meaning(message, "a")


def test_growth_of_raw_tokens_is_read_over_all_tokens():
    """An explosion confined to a minority of tokens fires by default (all tokens); read at
    the cls token (``layout="tokens"``) it is missed, which is why that is not the default."""
    gen = torch.Generator().manual_seed(2)
    h0 = torch.randn(16, 11, 8, generator=gen)
    h1 = h0.clone()
    h1[:, 3:5, :] *= 1e3  # 2 of 11 tokens explode; the cls token and the other 8 do not
    with pytest.raises(AssertionError, match=r"Largest per-block growth: [0-9.]+× at block 0"):
        assert_no_residual_explosion([h0, h1])
    assert_no_residual_explosion([h0, h1], layout="tokens")  # the cls token reads 1×
    h2 = h0.clone()
    h2[:, 0, :] *= 1e3
    with pytest.raises(AssertionError, match="block 0"):
        assert_no_residual_explosion([h0, h2], layout="tokens")


@PROPERTY
@given(
    scales=st.lists(st.floats(0.05, 500.0), min_size=1, max_size=5),
    log_c=st.floats(-140.0, 140.0),
    seed=st.integers(0, 2**16),
)
def test_growth_is_scale_invariant(scales, log_c, seed):
    """h_{l+1} = s_l h_l: the statistic is max s_l for any overall scale c of the stream."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(24, 6, generator=gen, dtype=torch.float64)
    c = 10.0**log_c
    hidden = [base * c]
    for s in scales:
        hidden.append(hidden[-1] * s)
    top = max(scales)
    block = scales.index(top)
    assert_no_residual_explosion(hidden, max_growth=top * (1 + 1e-9))
    with pytest.raises(AssertionError) as info:
        assert_no_residual_explosion(hidden, max_growth=top * (1 - 1e-9))
    message = str(info.value)
    assert f"{top:.4g}×" in message
    assert f"block {block}" in message or scales.count(top) > 1


# ============================================================================================
# (b) assert_grad_above_floor
# ============================================================================================


def test_floor_passes_on_trained_reports(bp_report, dfa_report):
    for report in (bp_report, dfa_report):
        assert not report.diagnostics["b"].fires
        assert_grad_above_floor(report)


def test_floor_fails_on_report_with_value_floor_layer_and_meaning(exploding_tiny):
    row = exploding_tiny.layers[-1]
    assert exploding_tiny.diagnostics["b"].fires
    with pytest.raises(AssertionError) as info:
        assert_grad_above_floor(exploding_tiny)
    message = str(info.value)
    restated = row.g_norm * exploding_tiny.batch_size / DEFAULTS.floor_batch_size
    assert g4(row.g_norm) in message and g4(restated) in message
    assert f"h_{row.index}" in message and f"batch size {exploding_tiny.batch_size}" in message
    assert f"Floor: {DEFAULTS.grad_floor:g}" in message
    assert_meaning(message, "b")


def test_floor_explicit_floor_overrides_report(bp_report, exploding_tiny):
    g = bp_report.layers[-1].g_norm  # eval batch 128 = the floor's batch size
    # BP's backward gain is healthy: below a raised floor its reference is error-saturated
    assert_grad_above_floor(bp_report, floor=2 * g)
    paper = dataclasses.replace(bp_report, thresholds=bp_report.thresholds.updated(b_rule="paper"))
    with pytest.raises(AssertionError) as info:
        assert_grad_above_floor(paper, floor=2 * g)
    message = str(info.value)
    assert g4(g) in message and f"Floor: {2 * g:g}" in message and "h_4" in message
    assert_grad_above_floor(bp_report, floor=g / 2)
    # a floor looser than the report's own passes a report whose (b) fires
    assert_grad_above_floor(exploding_tiny, floor=1e-300)


def test_floor_marker_style_threshold_in_report_is_used(bp_trained, small_batches):
    result, _ = bp_trained
    paper = diagnose(result.model, small_batches, thresholds=DiagnosticThresholds(grad_floor=1.0, b_rule="paper"))
    assert paper.diagnostics["b"].fires
    with pytest.raises(AssertionError, match=r"Floor: 1 \("):
        assert_grad_above_floor(paper)
    # a healthy gain makes a reference below the floor error-saturated, not Mode 1
    decomposed = diagnose(result.model, small_batches, thresholds=DiagnosticThresholds(grad_floor=1.0))
    assert decomposed.diagnostics["b"].submode == "error-saturated" and not decomposed.diagnostics["b"].fires
    assert_grad_above_floor(decomposed)
    mode1 = diagnose(result.model, small_batches, thresholds=DiagnosticThresholds(grad_floor=1.0, gain_floor=1e9))
    with pytest.raises(AssertionError, match=r"Mode 1: backward gain collapsed; rule: decomposed"):
        assert_grad_above_floor(mode1)


def _ce_grad_at_logits(model_seed: int, batch: int, repeat: int):
    """dCE/dlogits of a batch-mean CE for a batch and for the same batch repeated."""
    gen = torch.Generator().manual_seed(model_seed)
    logits = torch.randn(batch, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 5, (batch,), generator=gen)
    out = []
    for r in (1, repeat):
        z = logits.repeat(r, 1).requires_grad_(True)
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(z, y.repeat(r)), z)
        out.append(g)
    return out


def test_floor_restates_at_reference_batch_size():
    """The same per-sample gradient read at batch 256 carries 1/256 instead of 1/128: after
    restating (g · B / 128) both batch sizes give the same answer against the same floor."""
    g128, g256 = _ce_grad_at_logits(0, 128, 2)
    assert torch.allclose(g256[:128] * 2, g128)
    norms = g128.norm(dim=1)
    median128 = float(norms.median())
    assert math.isclose(float(g256.norm(dim=1).median()) * 256 / 128, median128, rel_tol=1e-12)
    for g in (g128, g256):
        assert_grad_above_floor(g, floor=median128 * (1 - 1e-6))
        with pytest.raises(AssertionError) as info:
            assert_grad_above_floor(g, floor=median128 * (1 + 1e-6))
        message = str(info.value)
        assert f"batch size {g.shape[0]}" in message and "restated at batch size 128" in message
        assert g4(median128) in message
        assert_meaning(message, "b")
    # explicit batch size: 128 rows that came from a batch of 256 (half the norm per row)
    half = g256[:128]
    with pytest.raises(AssertionError):
        assert_grad_above_floor(half, floor=median128 * (1 - 1e-6))
    assert_grad_above_floor(half, floor=median128 * (1 - 1e-6), batch_size=256)
    # explicit reference batch size: restated at 64 the same rows read twice as large
    assert_grad_above_floor(g128, floor=median128 * 1.5, floor_batch_size=64)


@PROPERTY
@given(
    log_norm=st.floats(-12.0, 2.0),
    batch=st.integers(2, 512),
    ratio=st.floats(0.5, 2.0).filter(lambda r: abs(r - 1.0) > 1e-6),
    seed=st.integers(0, 2**16),
)
def test_floor_verdict_depends_only_on_restated_norm(log_norm, batch, ratio, seed):
    """Rows whose median norm m at batch B restates to m·B/128: fails iff that is below floor."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(batch, 7, generator=gen, dtype=torch.float64)
    rows = rows / rows.norm(dim=1, keepdim=True) * 10.0**log_norm  # every row has norm m
    restated = 10.0**log_norm * batch / 128
    floor = restated * ratio
    if ratio < 1:
        assert_grad_above_floor(rows, floor=floor)
    else:
        with pytest.raises(AssertionError) as info:
            assert_grad_above_floor(rows, floor=floor)
        assert f"Floor: {floor:g}" in str(info.value)


def test_floor_default_floor_on_raw_tensor():
    rows = torch.full((128, 4), 1e-9, dtype=torch.float64)  # per-sample norm 2e-9 < 1e-7
    with pytest.raises(AssertionError) as info:
        assert_grad_above_floor(rows)
    assert "Floor: 1e-07" in str(info.value) and "h_L" in str(info.value)
    assert_grad_above_floor(torch.full((128, 4), 1e-6))


# ============================================================================================
# (c) assert_reference_not_drift
# ============================================================================================


def test_drift_raw_tensors():
    k, f = 8, 64
    gen = torch.Generator().manual_seed(3)
    direction = torch.randn(f, generator=gen)
    drift = direction.repeat(k, 1) * torch.linspace(0.5, 2.0, k)[:, None]  # cosine 1 everywhere
    with pytest.raises(AssertionError) as info:
        assert_reference_not_drift(drift)
    message = str(info.value)
    assert "+1.0000" in message and f"over {k} disjoint batches" in message
    assert f"Ceiling: {DEFAULTS.drift_ceiling:g}" in message
    assert_meaning(message, "c")
    orthogonal = torch.eye(k, f)  # pairwise cosine 0
    assert_reference_not_drift(orthogonal)
    # explicit ceiling
    assert_reference_not_drift(drift, ceiling=1.5)
    with pytest.raises(AssertionError):
        assert_reference_not_drift(orthogonal, ceiling=-0.5)


def test_drift_on_report_uses_value_layer_and_override(bp_report, dfa_report):
    for report in (bp_report, dfa_report):
        result = report.diagnostics["c"]
        if result.fires:
            with pytest.raises(AssertionError):
                assert_reference_not_drift(report)
        else:
            assert_reference_not_drift(report)
        with pytest.raises(AssertionError) as info:
            assert_reference_not_drift(report, ceiling=result.value - 0.01)
        message = str(info.value)
        assert f"{result.value:+.4f}" in message and f"h_{result.layer}" in message
        assert f"Ceiling: {result.value - 0.01:g}" in message
        assert_meaning(message, "c")
        assert_reference_not_drift(report, ceiling=result.value + 0.01)


# ============================================================================================
# (d) assert_beats_frozen
# ============================================================================================


def test_beats_frozen_on_floats():
    assert_beats_frozen(0.90, 0.50)
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(0.51, 0.50)
    message = str(info.value)
    assert "0.5100" in message and "0.5000" in message and "+1.00 pp" in message
    assert f"Required margin: {DEFAULTS.frozen_margin_pp:g} pp" in message
    assert_meaning(message, "d")
    assert_beats_frozen(0.51, 0.50, margin_pp=0.5)
    with pytest.raises(AssertionError, match="Required margin: 50 pp"):
        assert_beats_frozen(0.90, 0.50, margin_pp=50)


def test_beats_frozen_on_report_and_overrides(healthy_tiny, bp_report):
    assert_beats_frozen(healthy_tiny)  # 0.9 vs 0.5
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(healthy_tiny, frozen_acc=0.895)
    assert "0.9000" in str(info.value) and "0.8950" in str(info.value) and "+0.50 pp" in str(info.value)
    with pytest.raises(AssertionError, match="Required margin: 41 pp"):
        assert_beats_frozen(healthy_tiny, margin_pp=41)
    assert_beats_frozen(healthy_tiny, margin_pp=39)
    strict = tiny_report([1.5], thresholds=DiagnosticThresholds(frozen_margin_pp=45.0))
    with pytest.raises(AssertionError, match="Required margin: 45 pp"):
        assert_beats_frozen(strict)
    acc = bp_report.headline_acc
    assert_beats_frozen(bp_report, frozen_acc=acc - 0.05)
    with pytest.raises(AssertionError):
        assert_beats_frozen(bp_report, frozen_acc=acc)


def test_beats_frozen_at_the_ceiling_fails_as_not_informative_not_as_d_firing():
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(1.0, 1.0)
    message = str(info.value)
    assert message.startswith("Diagnostic (d) is not informative (both accuracies at the ceiling): it cannot say")
    assert "Trained accuracy 1.0000 − frozen-blocks accuracy 1.0000 = +0.00 pp, sample count not known" in message
    assert "Rule: trained 1.0000 − frozen 1.0000, both within 2 pp of 1.0: the margin is at most" in message
    assert "fires" not in message and registry.get("d").meaning not in message
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(1.0, 0.999, samples=12000)
    message = str(info.value)
    assert "= +0.10 pp, on n = 12000 samples" in message
    assert ("Rule: trained 1.0000 − frozen 0.9990 on n = 12000 samples: the Wilson lower bound (z = 2) of each "
            "error rate is below 2 pp (trained 0.00 pp, frozen 0.06 pp)") in message
    assert_beats_frozen(1.0, 0.95, samples=12000)  # 5 pp of headroom, resolved: (d) is judged and passes


def test_beats_frozen_reads_the_sample_count_of_a_report_and_few_samples_widen_the_ceiling():
    report = tiny_report([1.5], headline=1.0, frozen=0.97, samples=100)
    assert report.diagnostics["d"].not_informative  # the report and the assertion apply one rule
    assert_beats_frozen(report, samples=12000)  # 3 pp of headroom resolved on 12000 samples
    assert_beats_frozen(1.0, 0.97)  # and without a sample count: the observed headroom
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(report)  # 3 errors in 100 samples do not resolve 2 pp
    message = str(info.value)
    assert "(both accuracies at the ceiling)" in message and "on n = 100 samples" in message
    assert "(trained 0.00 pp, frozen 1.01 pp), so 100 samples cannot show a 2 pp margin" in message


def test_beats_frozen_without_frozen_accuracy_is_a_clear_failure(dfa_report):
    assert dfa_report.frozen_acc is None
    with pytest.raises(AssertionError) as info:
        assert_beats_frozen(dfa_report)
    assert "frozen" in str(info.value) and "frozen_acc" in str(info.value)
    with pytest.raises(AssertionError, match="frozen_acc"):
        assert_beats_frozen(0.9)
    # given explicitly, the report's headline is compared with it
    assert_beats_frozen(dfa_report, frozen_acc=0.0)


# ============================================================================================
# assert_trustworthy
# ============================================================================================


def test_trustworthy_passes_on_healthy_report(healthy_tiny, bp_report):
    assert healthy_tiny.verdict == "trustworthy"
    assert_trustworthy(healthy_tiny)
    # trained BP, frozen_acc=0.0: (a), (b) are far from their thresholds, (d) needs > 2 % accuracy
    assert bp_report.verdict == "trustworthy"
    assert_trustworthy(bp_report)


def test_trustworthy_fails_with_verdict_and_report(exploding_tiny):
    fired = exploding_tiny.fired
    assert "a" in fired
    with pytest.raises(AssertionError) as info:
        assert_trustworthy(exploding_tiny)
    message = str(info.value)
    assert exploding_tiny.verdict.startswith("needs walk-back: (a)")
    assert exploding_tiny.verdict in message
    for key in fired:
        assert_meaning(message, key)
    assert "1e+04×" in message  # the measured growth is in the rendered report


def test_trustworthy_fails_when_a_diagnostic_is_missing(dfa_report):
    assert dfa_report.frozen_acc is None
    with pytest.raises(AssertionError, match=r"incomplete: \(d\) not evaluated"):
        assert_trustworthy(dfa_report)


def test_report_gamma_is_per_layer_for_dfa(dfa_report, bp_report):
    """The reports used above are real protocol reports: Γ per layer for DFA's credit, and
    none at all where no credit signal was given."""
    assert len(dfa_report.layers) == 5
    assert all(row.gamma is not None and -1.0 <= row.gamma <= 1.0 for row in dfa_report.layers)
    assert all(row.gamma is None for row in bp_report.layers)  # no credit given
