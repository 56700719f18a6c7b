"""Pitfall 2: ``F.cosine_similarity`` clamps each norm at eps = 1e-8, so below it the value is
``cos(a_i, g_i) · ‖g_i‖ / 1e-8``, a shrunken number instead of a direction."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe as P
from pytest_fa.core import report as R
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed
from pytest_fa.pitfalls.regimes import credited_rows
from pytest_fa.training.methods import feature_dims

pytestmark = pytest.mark.fa_pitfall("2")

EPS = 1e-8  # F.cosine_similarity's default eps


def naive_cosine(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The cosine as it is written in the field: per row, with the default eps clamp."""
    return F.cosine_similarity(a, g, dim=1)


GUARD = Guard("pytest_fa.core.diagnostics.cosine_per_sample", lambda a, g: naive_cosine(a, g).to(torch.float64),
              "eps-free float64 cosine replaced by F.cosine_similarity (norms clamped at 1e-8)",
              Witness(thresholds=(("grad_floor", 1e-30),),
                      why_not="at the default floor the deep layers of the Mode-1 bundle are undefined, so no clamped "
                      "cosine reaches the report; the witness lowers the floor, as a threshold sweep does"))


def clamped_layers(g) -> list[int]:
    """The hidden layers whose median per-sample ‖g_l‖ is under a third of the clamp."""
    return [layer for layer in range(1, len(g)) if float(D.per_sample_norms(g[layer]).median()) < EPS / 3]


def test_clamped_cosine_shrinks_deep_layer_gamma_on_a_real_mode1_run(degenerate_dfa):
    """Pitfall 2: on DFA in Mode 1 the deep ‖g_i‖ are below eps; F.cosine_similarity shrinks Γ by ‖g‖/eps."""
    model = copy.deepcopy(degenerate_dfa.model).eval()
    a, g = credited_rows(model, degenerate_dfa.batches, DFACredit(degenerate_dfa.feedback))
    below = clamped_layers(g)
    # the regime trains until the deepest reference is 50x below the floor: h_L is always under the
    # clamp, the shallower hidden layers on some realisations (all four on seed 42, one thread)
    assert len(g) - 1 in below, [float(D.per_sample_norms(t).median()) for t in g]
    honest_gamma, naive_gamma = [], []
    for layer in below:
        norms = D.per_sample_norms(g[layer])
        honest = D.cosine_per_sample(a[layer], g[layer])
        naive = naive_cosine(a[layer], g[layer]).double()
        # the mechanism: the clamped value is the cosine times min(1, ‖g‖ / eps)
        torch.testing.assert_close(naive, honest * torch.clamp(norms / EPS, max=1.0), rtol=0, atol=1e-5)
        shrink = (honest.abs() / naive.abs()).median()
        assert shrink > 3, f"h_{layer}: median shrink {float(shrink):.2f}"
        # a cosine does not depend on the scale of its arguments; the clamped one does
        rescaled = g[layer] * 2.0**27  # ~1.3e8, exact in binary: lifts every ‖g_i‖ above eps
        torch.testing.assert_close(D.cosine_per_sample(a[layer], rescaled), honest, rtol=0, atol=1e-12)
        torch.testing.assert_close(naive_cosine(a[layer], rescaled).double(), honest, rtol=0, atol=1e-5)
        honest_gamma.append(float(honest.mean()))
        naive_gamma.append(float(naive.mean()))
    # measured (seed 42, one thread): mean |Γ_l| over h_1..h_4 is 0.046 eps-free and 0.012 clamped (3.8x)
    honest_size = sum(abs(v) for v in honest_gamma) / len(honest_gamma)
    naive_size = sum(abs(v) for v in naive_gamma) / len(naive_gamma)
    assert naive_size < honest_size / 2, (honest_gamma, naive_gamma)


def test_clamp_is_harmless_while_the_reference_is_healthy(healthy_bp):
    """Pitfall 2: on healthy BP (‖g_l‖ ≈ 3e-3) the clamp never engages: both cosines agree to 1e-6."""
    model = copy.deepcopy(healthy_bp.model).eval()
    dims = feature_dims(model, healthy_bp.data.input_shape)
    fresh = init_dfa_feedback(healthy_bp.data.num_classes, dims, torch.Generator().manual_seed(0))
    a, g = credited_rows(model, healthy_bp.batches, DFACredit([b.to(healthy_bp.device) for b in fresh]))
    for layer in range(len(g)):
        assert float(D.per_sample_norms(g[layer]).min()) > EPS  # smallest over the sweep: 7.9e-7
        honest = D.cosine_per_sample(a[layer], g[layer])
        torch.testing.assert_close(naive_cosine(a[layer], g[layer]).double(), honest, rtol=0, atol=1e-6)


def test_report_marks_deep_gamma_undefined_instead_of_a_clamped_number(degenerate_dfa):
    """Pitfall 2: pytest-fa reports Γ_l undefined below the floor where the clamped cosine prints a number."""
    model = copy.deepcopy(degenerate_dfa.model).eval()
    report = R.diagnose(model, degenerate_dfa.batches, credit=DFACredit(degenerate_dfa.feedback))
    a, g = credited_rows(model, degenerate_dfa.batches, DFACredit(degenerate_dfa.feedback))
    for layer in clamped_layers(g):
        row = report.layers[layer]
        naive = float(naive_cosine(a[layer], g[layer]).mean())
        assert abs(naive) < 0.05, "the clamped Γ reads as a small, plausible number"
        assert row.gamma is None and row.gamma_status.startswith("undefined"), (row.index, row.gamma_status)
        assert row.g_norm < EPS
    # layer 0's reference is far above the clamp: there Γ_0 is defined and the two agree (up to
    # the few samples that sit under the clamp even there)
    assert report.layers[0].g_norm > 100 * EPS and report.layers[0].gamma is not None
    assert abs(report.layers[0].gamma - float(naive_cosine(a[0], g[0]).mean())) < 1e-3
    assert report.gamma_mean(1) is None


@given(fst.credit_and_reference(), st.integers(min_value=-12, max_value=12))
@settings(max_examples=60, deadline=None)
def test_cosine_per_sample_is_exact_and_scale_free(pair, exponent):
    """Pitfall 2: pytest-fa's cosine equals the exact cosine at any norm (1e-30…1e8) and dtype, and ignores scale."""
    a, g = pair
    a64, g64 = a.double(), g.double()
    # exact reference: rescale each row by its largest entry (no eps anywhere), then the textbook formula
    a_s = a64 / a64.abs().amax(dim=1, keepdim=True)
    g_s = g64 / g64.abs().amax(dim=1, keepdim=True)
    exact = (a_s * g_s).sum(1) / (a_s.norm(dim=1) * g_s.norm(dim=1))
    got = D.cosine_per_sample(a, g)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, exact, rtol=0, atol=1e-9)
    torch.testing.assert_close(D.cosine_per_sample(a64, g64 * 10.0**exponent), exact, rtol=0, atol=1e-9)


def test_user_checkpoint_reference_is_above_the_clamp(fa_checkpoint, fa_eval_batches):
    """Pitfall 2: is any layer's median ‖g_l‖ below F.cosine_similarity's 1e-8 clamp on your checkpoint?"""
    model = copy.deepcopy(fa_checkpoint.model).eval()
    probe = P.run_probe(model, fa_eval_batches)
    medians = D.layer_medians(probe.grad_norms)
    below = [(index, float(m)) for index, m in enumerate(medians) if m < EPS]
    if below:
        detail = ", ".join(f"‖g_{i}‖ = {m:.3g} (clamped cosine shrunk ~{EPS / m:.0f}x)" for i, m in below)
        exposed("2", f"{fa_checkpoint.path}: median per-sample BP reference below eps = 1e-8 at eval batch "
                f"{probe.batch_size}: {detail}; any Γ computed with F.cosine_similarity at these layers "
                "measures ‖g‖, not direction")
