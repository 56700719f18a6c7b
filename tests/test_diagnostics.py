"""The pure diagnostic functions: exact on known inputs, immune to scale and dtype."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa.core import diagnostics as D
from pytest_fa.errors import DataError, NonFiniteError

scales = st.floats(min_value=1e-30, max_value=1e8)
dtypes = st.sampled_from([torch.float32, torch.float64, torch.bfloat16])


def rows(seed: int, n: int = 6, f: int = 17) -> torch.Tensor:
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@given(seed=st.integers(0, 2**16), scale=scales, dtype=dtypes)
@settings(max_examples=60, deadline=None)
def test_norms_keep_their_value_at_any_scale_and_dtype(seed, scale, dtype):
    x = (rows(seed) * scale).to(dtype)
    exact = torch.linalg.vector_norm(x.to(torch.float64) / scale, dim=1) * scale
    torch.testing.assert_close(D.per_sample_norms(x), exact, rtol=1e-12, atol=0)


def test_norms_survive_where_float32_squares_underflow():
    x = torch.full((2, 8), 1e-30, dtype=torch.float32)
    assert torch.linalg.vector_norm(x, dim=1)[0].item() == 0.0  # squares underflow in float32
    assert D.per_sample_norms(x)[0].item() == pytest.approx(math.sqrt(8) * 1e-30, rel=1e-6)


def test_norms_are_l2_along_features_not_the_p_minus_one_norm():
    x = torch.tensor([[3.0, 4.0], [6.0, 8.0]])
    torch.testing.assert_close(D.per_sample_norms(x), torch.tensor([5.0, 10.0], dtype=torch.float64))
    assert x.norm(-1).item() != pytest.approx(5.0)  # the pitfall the function avoids


@given(seed=st.integers(0, 2**16), sa=scales, sg=scales, dtype=dtypes)
@settings(max_examples=60, deadline=None)
def test_cosine_is_scale_invariant_without_a_clamp(seed, sa, sg, dtype):
    a, g = rows(seed), rows(seed + 1)
    reference = D.cosine_per_sample(a, g)
    scaled = D.cosine_per_sample((a * sa).to(dtype), (g * sg).to(dtype))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 3e-2}[dtype]
    torch.testing.assert_close(scaled, reference, rtol=0, atol=tol)


def test_cosine_matches_torch_away_from_the_floor_and_departs_below_it():
    a, g = rows(0), rows(1)
    torch.testing.assert_close(D.cosine_per_sample(a, g), F.cosine_similarity(a, g, dim=1))
    tiny = g * 1e-10  # ‖g‖ ~ 4e-10, below F.cosine_similarity's 1e-8 clamp
    clamped = F.cosine_similarity(a, tiny, dim=1)
    ours = D.cosine_per_sample(a, tiny)
    torch.testing.assert_close(ours, D.cosine_per_sample(a, g))
    assert (clamped.abs() < ours.abs() / 5).all()


def test_cosine_is_undefined_for_zero_rows_and_mismatched_shapes_raise():
    a = rows(0, n=3)
    g = rows(1, n=3)
    g[1] = 0
    out = D.cosine_per_sample(a, g)
    assert torch.isnan(out[1]) and not torch.isnan(out[[0, 2]]).any()
    with pytest.raises(ValueError, match="same samples"):
        D.cosine_per_sample(a, g[:, :5])
    with pytest.raises(ValueError, match=r"\(B, F\)"):
        D.per_sample_norms(torch.zeros(2, 3, 4))


def test_mean_defined_skips_undefined_samples():
    assert D.mean_defined(torch.tensor([1.0, float("nan"), 0.0])) == (0.5, 2)
    mean, count = D.mean_defined(torch.tensor([float("nan")]))
    assert math.isnan(mean) and count == 0


def test_residual_growth_is_the_largest_ratio_of_consecutive_medians():
    norms = torch.tensor([2.0, 4.0, 400.0, 800.0])
    torch.testing.assert_close(D.block_growth(norms), torch.tensor([2.0, 100.0, 2.0], dtype=torch.float64))
    assert D.residual_growth(norms) == (100.0, 1)
    assert D.layer_medians([torch.tensor([1.0, 3.0, 2.0]), torch.tensor([5.0])]).tolist() == [2.0, 5.0]


@given(seed=st.integers(0, 2**16), scale=scales)
def test_residual_growth_is_scale_invariant(seed, scale):
    norms = rows(seed, n=1, f=5).abs().flatten() + 0.1
    growth, block = D.residual_growth(norms)
    scaled, scaled_block = D.residual_growth(norms * scale)
    assert scaled == pytest.approx(growth, rel=1e-12) and scaled_block == block


@pytest.mark.parametrize(("norms", "why"), [
    ([1.0, float("nan"), 2.0], r"a median ‖h_l‖ is not finite: growth undefined at block 0 \(‖h_1‖ / ‖h_0‖ = nan / 1\)"),
    ([1.0, 0.0, 2.0], r"a median ‖h_l‖ is 0: growth undefined at block 1 \(‖h_2‖ / ‖h_1‖ = 2 / 0\)"),
    ([0.0, 0.0, 0.0], r"a median ‖h_l‖ is 0: growth undefined at block 0 \(‖h_1‖ / ‖h_0‖ = 0 / 0\)"),
], ids=["nan-norm", "zero-norm", "all-zero"])
def test_an_undefined_growth_is_refused_not_reported_as_a_number(norms, why):
    """A growth of inf (x/0) or NaN (0/0, or a NaN norm) is no measurement: (a) fired on it."""
    with pytest.raises(NonFiniteError, match=why + ", so \\(a\\) cannot say whether the residual stream explodes"):
        D.residual_growth(torch.tensor(norms))


@given(b=st.integers(1, 4096), g=st.floats(1e-12, 1.0))
def test_floor_restates_the_gradient_at_the_reference_batch(b, g):
    assert D.grad_at_reference_batch(g, b, 128) == pytest.approx(g * b / 128)
    # the per-sample gradient of a batch-mean loss is g_i / B: restating removes B
    assert D.grad_at_reference_batch(g / b, b, 128) == pytest.approx(g / 128)


def test_grad_floor_at_the_papers_batch_size_is_the_papers_rule():
    assert D.grad_floor(4.2e-9, 128)
    assert not D.grad_floor(3.7e-4, 128)
    assert D.grad_floor(0.9e-7, 128) and not D.grad_floor(1.1e-7, 128)
    # the same network measured at batch 256 shows half the batch-mean gradient
    assert not D.grad_floor(0.6e-7, 256)


def test_direction_stability_separates_drift_from_noise():
    drift = rows(0, n=1, f=64).repeat(8, 1) + 0.01 * rows(1, n=8, f=64)
    assert D.direction_stability(drift) > 0.99
    noise = rows(2, n=8, f=4096)
    assert abs(D.direction_stability(noise)) < 0.05
    assert D.stability_submode(0.992) == "drift-dominated"
    assert D.stability_submode(0.047) == "noise-dominated"
    with pytest.raises(ValueError, match="two"):
        D.direction_stability(rows(0, n=1))


def test_a_zero_batch_mean_gradient_leaves_the_stability_undefined():
    """A zero batch mean has no direction: the stability was NaN, read as noise-dominated."""
    means = rows(0, n=8, f=16)
    means[3] = 0.0
    with pytest.raises(NonFiniteError, match=r"1 of 8 batch-mean reference gradients are exactly zero"):
        D.direction_stability(means)
    with pytest.raises(NonFiniteError, match=r"8 of 8 .* \(c\) cannot say whether the reference is drift"):
        D.direction_stability(torch.zeros(8, 16))


def test_direction_stability_is_the_mean_over_distinct_pairs():
    units = torch.eye(3, dtype=torch.float64)
    units = torch.cat([units, units[:1]])  # batches 0 and 3 agree, all else orthogonal
    assert D.direction_stability(units * 7.0) == pytest.approx(1 / 6)


def test_frozen_margin_is_in_points_and_rejects_non_fractions():
    assert D.frozen_margin_pp(0.306, 0.349) == pytest.approx(-4.3)
    with pytest.raises(ValueError, match="fraction"):
        D.frozen_margin_pp(30.6, 0.349)


# -- one NaN rule for (b) ------------------------------------------------------------------------


@pytest.mark.parametrize("read", [
    lambda: D.grad_floor(math.nan, 128),
    lambda: D.floor_rule(math.nan, 1.0),
    lambda: D.floor_rule(math.nan, None),
    lambda: D.floor_rule(math.nan, 1e-9, rule="paper"),
], ids=["grad_floor", "decomposed", "no-gain", "paper"])
def test_a_nan_reference_is_not_a_measurement_under_any_rule(read):
    """Before, a NaN was above the floor in one reading and at it in another."""
    with pytest.raises(NonFiniteError, match=r"‖g_L‖ is NaN, which is not a measurement: \(b\) cannot say"):
        read()


# -- (d) at the ceiling ----------------------------------------------------------------------------


def test_both_accuracies_at_the_ceiling_leave_d_not_informative():
    assert D.frozen_at_ceiling(1.0, 1.0)
    assert D.frozen_at_ceiling(0.99, 0.995)  # 0.5 pp of headroom cannot show a 2 pp margin
    assert not D.frozen_at_ceiling(1.0, 0.97)  # 3 pp of headroom: a margin can be shown
    assert not D.frozen_at_ceiling(0.5, 0.995)  # far below the frozen model: a measured shortfall
    assert not D.frozen_at_ceiling(1.0, 1.0, margin_pp=0.0)  # a margin ≥ 0 is reachable at 1.0


@given(trained=st.floats(0, 1), frozen=st.floats(0, 1), margin_pp=st.floats(-99, 99))
def test_at_the_ceiling_no_trained_accuracy_could_show_the_margin(trained, frozen, margin_pp):
    if D.frozen_at_ceiling(trained, frozen, margin_pp):
        assert D.frozen_margin_pp(1.0, frozen) < margin_pp  # even a perfect trained model falls short
        assert abs(D.frozen_margin_pp(trained, frozen)) < margin_pp


def test_with_the_sample_count_the_ceiling_allows_for_the_sampling_resolution():
    assert D.frozen_at_ceiling(1.0, 0.999, n=12000)  # 0.1 pp of headroom, well resolved
    assert not D.frozen_at_ceiling(1.0, 0.95, n=12000)  # 5 pp of headroom, resolved above 2 pp
    # 3 pp of observed headroom: 12000 samples resolve it above 2 pp, 100 samples (3 errors) do not
    assert not D.frozen_at_ceiling(1.0, 0.97) and not D.frozen_at_ceiling(1.0, 0.97, n=12000)
    assert D.frozen_at_ceiling(1.0, 0.97, n=100)
    assert not D.frozen_at_ceiling(0.5, 0.995, n=100)  # a trained model 50 pp short is a shortfall
    assert not D.frozen_at_ceiling(1.0, 1.0, margin_pp=0.0, n=10)
    assert D.headroom_lower_bound_pp(0.97, None) == pytest.approx(3.0)
    assert D.headroom_lower_bound_pp(0.97, 100) == pytest.approx(1.005, abs=1e-3)


@pytest.mark.parametrize("n", [0, -5, 2.5, "100"])
def test_a_sample_count_that_is_not_a_positive_integer_is_refused(n):
    with pytest.raises(DataError, match=re.escape(f"n={n!r} samples: give the number of samples") + ".* positive integer"):
        D.frozen_at_ceiling(1.0, 1.0, n=n)


@given(acc=st.floats(0, 1), n=st.integers(1, 10**6))
def test_the_headroom_bound_is_the_lower_end_of_the_wilson_interval(acc, n):
    """``L`` solves ``n (e − L)² = z² L (1 − L)`` with ``0 ≤ L ≤ e``: the Wilson score bound."""
    e, low = 1.0 - acc, D.headroom_lower_bound_pp(acc, n) / 100.0
    assert 0.0 <= low <= e + 1e-12
    if low > 0:
        assert n * (e - low) ** 2 == pytest.approx(D.CEILING_Z ** 2 * low * (1 - low), rel=1e-6, abs=1e-12)


@given(trained=st.floats(0, 1), frozen=st.floats(0, 1), margin_pp=st.floats(-99, 99),
       n=st.integers(1, 10**6), more=st.integers(0, 10**6))
def test_fewer_samples_only_widen_the_ceiling(trained, frozen, margin_pp, n, more):
    with_more = D.frozen_at_ceiling(trained, frozen, margin_pp, n + more)
    assert not D.frozen_at_ceiling(trained, frozen, margin_pp) or with_more  # the observed headroom: n → ∞
    assert not with_more or D.frozen_at_ceiling(trained, frozen, margin_pp, n)
