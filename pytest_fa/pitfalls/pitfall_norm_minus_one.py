"""Pitfall 1: ``tensor.norm(-1)`` is the p = -1 'norm' of the whole tensor, not the L2 norm
along the last dimension."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core.interface import forward_hidden
from pytest_fa.core.reference import reference_pass
from pytest_fa.pitfalls import Guard

pytestmark = pytest.mark.fa_pitfall("1")


def _naive_per_sample_norms(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().norm(-1).expand(x.shape[0])  # noqa: FA001


GUARD = Guard("pytest_fa.core.diagnostics.per_sample_norms", _naive_per_sample_norms,
              "per-sample L2 norms replaced by x.norm(-1)")


def naive_layer_norms(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The bug as it is written: one positional -1 meant as ``dim``."""
    return torch.tensor([float(t.norm(-1)) for t in tensors], dtype=torch.float64)  # noqa: FA001


def test_naive_norm_reports_a_healthy_bp_reference_at_the_floor(healthy_bp):
    """Pitfall 1: on a healthy BP network the naive ‖g_L‖ fires diagnostic (b) falsely."""
    x, y = healthy_bp.batches[0]
    grads = reference_pass(healthy_bp.model, x, y).grads
    honest = float(D.per_sample_norms(grads[-1]).median())
    naive = float(naive_layer_norms(grads)[-1])
    assert not D.grad_floor(honest, len(x)), f"BP's reference should be healthy, got {honest:.3g}"
    assert D.grad_floor(naive, len(x)), f"naive ‖g_L‖ = {naive:.3g} should read as 'at the floor'"
    assert naive < honest / 1000


def test_naive_norm_misreads_the_scale_of_a_real_explosion(degenerate_dfa):
    """Pitfall 1: on a DFA network in Mode 1 the naive ‖h_l‖ are off by orders of magnitude."""
    x, _ = degenerate_dfa.batches[0]
    with torch.no_grad():
        _, hiddens = forward_hidden(degenerate_dfa.model, x)
    honest = D.layer_medians([D.per_sample_norms(h) for h in hiddens])
    assert D.residual_growth(honest)[0] > 50, "the run did not reach Mode 1"
    # p = -1 is dominated by the smallest of all B × d entries, not by any sample's scale
    naive = naive_layer_norms(hiddens)
    assert (naive < honest / 100).all(), (naive.tolist(), honest.tolist())


@given(fst.per_sample_rows(batch_sizes=fst.st.integers(2, 32)))
@settings(max_examples=50, deadline=None)
def test_per_sample_norms_are_l2_along_features(x):
    """Pitfall 1: pytest-fa's norms equal the per-row L2 norm at any shape, scale and dtype."""
    exact = torch.stack([torch.sqrt((row.double() ** 2).sum()) for row in x])
    torch.testing.assert_close(D.per_sample_norms(x), exact, rtol=1e-9, atol=0)
    assert D.per_sample_norms(x).shape == (x.shape[0],)
    # and the naive call is a different quantity altogether: a single number
    assert x.double().norm(-1).dim() == 0  # noqa: FA001
