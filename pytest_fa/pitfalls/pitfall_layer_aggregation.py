"""Pitfall 6: per-layer structure is hidden by aggregation: a global cosine is carried by the
layers with the largest ‖g_l‖ (layer 0 on the ResMLP under DFA)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import calibration as CAL
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe as P
from pytest_fa.core import report as R
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.pitfalls import Guard
from pytest_fa.pitfalls.fixtures import exposed
from pytest_fa.pitfalls.regimes import credited_rows

pytestmark = pytest.mark.fa_pitfall("6")


def _naive_report_from_probe(probe, *, thresholds, label="", **_ignored):
    """One headline Γ — every sample's cosine pooled over all layers — written into every row."""
    pooled = torch.cat([c for c in probe.cosines if c is not None]) if probe.cosines else torch.zeros(0)
    headline = float(pooled[~torch.isnan(pooled)].mean()) if len(pooled) else None
    h_med = D.layer_medians(probe.hidden_norms)
    g_med = D.layer_medians(probe.grad_norms)
    rows = [R.LayerRow(index=index, h_norm=float(h_med[index]), growth=None, g_norm=float(g_med[index]),
                       g_norm_at_reference=float(g_med[index]), gamma=headline,
                       gamma_status="ok (pooled over layers)", gamma_samples=len(pooled))
            for index in range(probe.num_layers)]
    return R.DiagnosticReport(label=label, layers=rows, diagnostics={}, thresholds=thresholds,
                              batch_size=probe.batch_size, num_batches=probe.num_batches, dtype=probe.dtype,
                              device=probe.device, mode=probe.mode)


GUARD = Guard("pytest_fa.core.report.report_from_probe", _naive_report_from_probe,
              "per-layer Γ_l replaced by one headline Γ pooled over all layers")


def global_cosine(a: list[torch.Tensor], g: list[torch.Tensor]) -> float:
    """The single headline: one cosine over all samples and layers concatenated (no eps)."""
    flat_a = torch.cat([t.double().reshape(-1) for t in a])
    flat_g = torch.cat([t.double().reshape(-1) for t in g])
    return float(F.cosine_similarity(flat_a, flat_g, dim=0, eps=0.0))


def layer_report(model, regime) -> R.DiagnosticReport:
    probe = P.run_probe(model, regime.batches, credit=DFACredit(regime.feedback))
    return R.report_from_probe(probe, thresholds=DiagnosticThresholds())


def test_global_cosine_reads_a_number_while_only_layer_0_is_defined(degenerate_dfa):
    """Pitfall 6: in Mode 1 the headline cosine is layer 0's alone; the report shows h_1..h_L undefined."""
    model = copy.deepcopy(degenerate_dfa.model).eval()
    a, g = credited_rows(model, degenerate_dfa.batches, DFACredit(degenerate_dfa.feedback))
    energy = torch.stack([(t.double() ** 2).sum() for t in g])
    assert float(energy[0] / energy.sum()) > 0.99  # measured 1 - 1e-8 (seed 42, one thread)
    headline = global_cosine(a, g)
    # the deep layers contribute nothing to the headline: with their reference zeroed it is the same
    layer_0_only = global_cosine(a, [g[0]] + [torch.zeros_like(t) for t in g[1:]])
    assert math.isfinite(headline) and abs(headline - layer_0_only) < 1e-3, (headline, layer_0_only)
    report = layer_report(model, degenerate_dfa)
    first, deep = report.layers[0], report.layers[1:]
    assert first.gamma is not None, first
    assert all(row.gamma is None and row.gamma_status.startswith("undefined") for row in deep), [
        (row.index, row.gamma_status) for row in deep
    ]
    assert report.gamma_mean(1) is None
    assert report.to_dict()["gamma"]["mean_deep_layers"] is None


def test_headline_hides_deep_layers_outside_the_null_band(degenerate_dfa):
    """Pitfall 6: at epoch 1 the global cosine (carried by layer 0) is ≈ 0 while the deep layers sit far outside the null."""
    model = degenerate_dfa.meaningful_model_at(1)  # asserts epoch 1 is above the floor
    a, g = credited_rows(model, degenerate_dfa.batches, DFACredit(degenerate_dfa.feedback))
    headline = global_cosine(a, g)
    report = layer_report(model, degenerate_dfa)
    assert all(row.gamma is not None for row in report.layers)
    gamma_0, deep = report.layers[0].gamma, report.gamma_mean(1)
    null = CAL.null_gamma(model, degenerate_dfa.batches, degenerate_dfa.data.num_classes, n=20)
    deep_null = null.draws[:, 1:].mean(dim=1)
    z_deep = (deep - float(deep_null.mean())) / float(deep_null.std())
    # measured (seed 42, one thread): headline -0.0020 (layer 0 holds 99.4 % of ‖g‖²), Γ_0 -0.038,
    # deep mean -0.080 (z = -6.4); over the sweep the headline reaches +0.023, always nearer Γ_0
    assert abs(headline - gamma_0) < abs(headline - deep), (headline, gamma_0, deep)
    assert abs(z_deep) > 3, (deep, z_deep)
    assert abs(deep - headline) > 0.03 and abs(headline) < abs(deep) / 2, (headline, deep)


@st.composite
def credit_and_reference_stacks(draw):
    """Credit and reference stacks of one shape whose per-layer scales wander (1e-30 … 1e8)."""
    shape = {
        "depths": st.just(draw(st.integers(min_value=1, max_value=6))),
        "batch_sizes": st.just(draw(st.integers(min_value=2, max_value=16))),
        "features": st.just(draw(st.integers(min_value=2, max_value=16))),
        "dtype": st.just(draw(fst.dtypes(include_float16=False))),
    }
    return draw(fst.hidden_stacks(**shape)), draw(fst.hidden_stacks(**shape))


def _probe(a, g) -> P.Probe:
    mid = (len(g) - 1) // 2
    norms = [D.per_sample_norms(t) for t in g]
    return P.Probe(hidden_norms=norms, grad_norms=norms, mid_layer=mid, mid_batch_means=g[mid].double(),
                   cosines=[D.cosine_per_sample(x, y) for x, y in zip(a, g)],
                   credit_norms=[D.per_sample_norms(t) for t in a], batch_size=len(g[0]), num_batches=8,
                   dtype=str(g[0].dtype).removeprefix("torch."), device="cpu")


# strategies.py draws `dtype or dtypes()`, which warns when a strategy is passed (harmless)
@pytest.mark.filterwarnings("ignore:bool\\(.*\\) is always True")
@given(credit_and_reference_stacks(), st.integers(min_value=-6, max_value=6))
@settings(max_examples=40, deadline=None)
def test_report_keeps_every_layer_separate(stacks, exponent):
    """Pitfall 6: each Γ_l is that layer's own per-sample mean (or undefined), whatever the other layers' scales."""
    a, g = stacks
    thresholds = DiagnosticThresholds()
    report = R.report_from_probe(_probe(a, g), thresholds=thresholds)
    assert len(report.layers) == len(g)
    for row, x, y in zip(report.layers, a, g):
        reference = float(D.per_sample_norms(y).median()) * len(y) / thresholds.floor_batch_size
        if reference < thresholds.grad_floor:
            assert row.gamma is None and row.gamma_status.startswith("undefined"), row
        else:
            assert row.gamma is not None and abs(row.gamma - float(D.cosine_per_sample(x, y).mean())) < 1e-12
    defined_deep = [row.gamma for row in report.layers[1:] if row.gamma is not None]
    if defined_deep:
        assert abs(report.gamma_mean(1) - sum(defined_deep) / len(defined_deep)) < 1e-12
    # rescaling layer 0 moves a pooled headline, never another layer's Γ_l
    rescaled = [g[0].double() * 10.0**exponent, *g[1:]]
    again = R.report_from_probe(_probe(a, rescaled), thresholds=thresholds)
    assert [r.gamma for r in again.layers[1:]] == [r.gamma for r in report.layers[1:]]


def test_user_checkpoint_needs_per_layer_reporting(fa_checkpoint, fa_eval_batches, fa_runner, fa_thresholds):
    """Pitfall 6: does one aggregate Γ hide per-layer structure on your checkpoint (vs a fresh-B null)?"""
    model = copy.deepcopy(fa_checkpoint.model).eval()
    credit, reason = fa_runner.credit_for(fa_checkpoint.loaded, model)
    if credit is None:
        pytest.skip(f"no credit signal to align: {reason}")
    report = R.report_from_probe(P.run_probe(model, fa_eval_batches, credit=credit), thresholds=fa_thresholds)
    null = CAL.null_gamma(model, fa_eval_batches, fa_checkpoint.data.num_classes, n=20)
    significant, null_like, lines = [], [], []
    for row, mu, sd in zip(report.layers, null.null_mean, null.null_std):
        if row.gamma is None:
            null_like.append(row.index)
            lines.append(f"Γ_{row.index} {row.gamma_status}")
            continue
        z = (row.gamma - mu) / sd if sd > 0 else float("inf")
        lines.append(f"Γ_{row.index} = {row.gamma:+.3f} (z {z:+.1f})")
        if abs(z) >= 4 and abs(row.gamma) >= 0.05:
            significant.append(row)
        elif abs(z) < 2:
            null_like.append(row.index)
    signs = {row.gamma > 0 for row in significant}
    if significant and (null_like or len(signs) > 1):
        headline = global_cosine(*credited_rows(model, fa_eval_batches, credit))
        defined = [row.gamma for row in report.layers if row.gamma is not None]
        exposed("6", f"{fa_checkpoint.path}: one global cosine over all layers reads {headline:+.3f} and the "
                f"mean of the defined Γ_l {sum(defined) / len(defined):+.3f}, but the layers disagree: "
                f"{'; '.join(lines)} (z: distance from a fresh-B null of 20 draws, in its standard deviations)")
