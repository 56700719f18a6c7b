"""Pitfall B7: alignment claims without a null control — Γ compared with 0 (or with a
"null" that reuses the training B) instead of with Γ under fresh random feedback."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import calibration, probe
from pytest_fa.core import diagnostics as D
from pytest_fa.core.calibration import NullCalibration
from pytest_fa.core.credit import DFACredit, init_dfa_feedback, output_error
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed, loaded_or_skip
from pytest_fa.pitfalls.regimes import MEANINGFUL_EPOCH

pytestmark = pytest.mark.fa_pitfall("B7")

NULL_DRAWS = 20
BAND = 2.0  # the null band: mean ± 2 std over the fresh draws


def _naive_null_gamma(model, eval_batches, num_classes, *, feedback=None, n=20, seed=0, exclude=None, reference=None):
    """A "null" that reuses the training B for every draw: it has no spread and sits on Γ itself."""
    trained = _gamma_per_sample(model, eval_batches, feedback if feedback is not None else exclude)
    per_layer = [D.mean_defined(c)[0] for c in trained]
    draws = torch.tensor([per_layer] * n, dtype=torch.float64)
    return NullCalibration(draws, per_layer if feedback is not None else None)


GUARD = Guard("pytest_fa.core.calibration.null_gamma", _naive_null_gamma,
              "the null reuses the training B instead of drawing fresh ones", Witness(bundle="meaningful"))


def _gamma_per_sample(model, batches, feedback) -> list[torch.Tensor]:
    """Per-sample cos(e_T B_l, g_l) over all batches, one tensor per layer."""
    return probe.run_probe(model, batches, credit=DFACredit(feedback)).cosines


def naive_significance(cosines: torch.Tensor) -> float:
    """The test a paper runs without a null: t = mean / (std / √N) over the samples."""
    cosines = cosines[~torch.isnan(cosines)]
    return float(cosines.mean() / (cosines.std() / math.sqrt(len(cosines))))


def _fresh_draw_cosines(model, batches, num_classes, draws: int, seed: int) -> list[list[torch.Tensor]]:
    """Per-sample cosines for ``draws`` fresh B (the draws null_gamma makes), per layer."""
    per_draw: list[list[list[torch.Tensor]]] = [[] for _ in range(draws)]
    for x, y in batches:
        ref = reference_pass(model, x, y)
        grads, e = ref.rows, output_error(ref.logits, y)
        dims = [g.shape[1] for g in grads]
        for index in range(draws):
            fresh = init_dfa_feedback(num_classes, dims, torch.Generator().manual_seed(seed * 100_003 + index))
            per_draw[index].append([D.cosine_per_sample(e @ b.to(e), g) for b, g in zip(fresh, grads)])
    return [[torch.cat(layer) for layer in zip(*draw)] for draw in per_draw]


def test_without_a_null_random_feedback_looks_significantly_aligned(degenerate_dfa):
    """Pitfall B7: Γ against 0 with a per-sample t-test calls most fresh random B "significant"."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    classes = degenerate_dfa.data.num_classes
    draws = _fresh_draw_cosines(model, degenerate_dfa.batches, classes, NULL_DRAWS, seed=7)
    deep = range(1, len(draws[0]))
    flagged = sum(abs(naive_significance(draw[layer])) > 2 for draw in draws for layer in deep)
    total = NULL_DRAWS * len(deep)
    # measured: the fresh-B null is 0.00 ± 0.02 per deep layer, the per-sample standard
    # error ~0.003, so |t| > 2 for most random draws
    assert flagged > total / 2, f"{flagged}/{total} random draws flagged"
    gammas = torch.tensor([[float(draw[layer].mean()) for layer in deep] for draw in draws])
    assert float(gammas.mean().abs()) < 0.01 and 0.005 < float(gammas.std()) < 0.06


def test_a_null_that_reuses_the_training_feedback_hides_a_real_effect(degenerate_dfa):
    """Pitfall B7: a "null" built from the training B sits on Γ itself and hides the deep Γ that
    the fresh-B null shows far outside it."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    classes = degenerate_dfa.data.num_classes
    trained = [D.mean_defined(c)[0] for c in _gamma_per_sample(model, degenerate_dfa.batches, degenerate_dfa.feedback)]
    reused = _naive_null_gamma(model, degenerate_dfa.batches, classes, feedback=degenerate_dfa.feedback)
    assert reused.null_std == [0.0] * len(trained)
    assert reused.null_mean == pytest.approx(trained)
    fresh = [[float(layer.mean()) for layer in draw] for draw in _fresh_draw_cosines(model, degenerate_dfa.batches, classes, NULL_DRAWS, seed=0)]
    fresh = torch.tensor(fresh, dtype=torch.float64)
    deep_trained = sum(trained[1:]) / len(trained[1:])
    deep_null = fresh[:, 1:].mean(dim=1)
    # measured: deep Γ -0.078; fresh deep null -0.001 ± 0.013 (n = 20): z ≈ -6
    z = (deep_trained - float(deep_null.mean())) / float(deep_null.std())
    assert z < -3, z
    assert abs(deep_trained - float(reused.draws[:, 1:].mean())) < 1e-12, "the reused 'null' sees no effect"


def test_null_gamma_draws_fresh_feedback_on_the_real_run(degenerate_dfa):
    """Pitfall B7: pytest-fa's null is ≈ 0 with a small spread; the deep Γ lie well outside it."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    classes = degenerate_dfa.data.num_classes
    null = calibration.null_gamma(model, degenerate_dfa.batches, classes, feedback=degenerate_dfa.feedback, n=NULL_DRAWS)
    # measured (seed 42, one thread): null mean +0.001 -0.003 -0.001 -0.002 -0.005,
    # std 0.018 0.024 0.020 0.024 0.021; trained -0.038 -0.060 -0.097 -0.071 -0.090
    assert all(abs(m) < 0.02 for m in null.null_mean), null.null_mean
    assert all(0.005 < s < 0.06 for s in null.null_std), null.null_std
    # the deep layers together: one of them can sit inside its band (z 0.04 on seed 123)
    deep_null = null.draws[:, 1:].mean(dim=1)
    deep_trained = sum(null.trained[1:]) / len(null.trained[1:])
    z_deep = (deep_trained - float(deep_null.mean())) / float(deep_null.std())
    assert abs(z_deep) > BAND, (null.z_scores(), z_deep)
    # the training-B Γ is the report's Γ_l: the same statistic on the same samples
    for ours, cos in zip(null.trained, _gamma_per_sample(model, degenerate_dfa.batches, degenerate_dfa.feedback)):
        assert ours == pytest.approx(D.mean_defined(cos)[0], abs=1e-9)


@given(n=st.integers(2, 4), seed=fst.seeds(), batch_size=st.integers(2, 64))
@settings(max_examples=10, deadline=None)
def test_the_null_never_contains_the_training_feedback(degenerate_dfa, n, seed, batch_size):
    """Pitfall B7: null_gamma's draws are reproducible from the seed, and differ from each
    other and from the training B."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    classes = degenerate_dfa.data.num_classes
    batches = [(x[:batch_size], y[:batch_size]) for x, y in degenerate_dfa.batches[:2]]
    seed = seed % 10_000
    null = calibration.null_gamma(model, batches, classes, feedback=degenerate_dfa.feedback, n=n, seed=seed)
    again = calibration.null_gamma(model, batches, classes, n=n, seed=seed)
    torch.testing.assert_close(null.draws, again.draws, rtol=0, atol=0)
    assert again.trained is None
    trained = torch.tensor(null.trained, dtype=torch.float64)
    for draw in null.draws:
        assert (draw - trained).abs().max() > 1e-6, "a draw reproduces the training B"
    assert (null.draws[0] - null.draws[1]).abs().max() > 1e-6
    assert all(s > 0 for s in null.null_std)


def test_user_checkpoint_deep_alignment_stands_out_of_the_null(fa_checkpoint_path, fa_runner):
    """Pitfall B7: your DFA checkpoint's deep-layer Γ lies outside the fresh-B null band."""
    run, batches = loaded_or_skip(fa_runner, fa_checkpoint_path)
    name = Path(run.path).name
    if run.method != "dfa":
        pytest.skip(f"{name} ({run.method or 'plain state dict'}): the fresh-B null is drawn for DFA feedback only")
    model = copy.deepcopy(run.pristine).eval()
    limits = DiagnosticThresholds()
    measured = probe.run_probe(model, batches)
    g = D.layer_medians(measured.grad_norms)
    below = [l for l in range(1, len(g)) if D.grad_floor(float(g[l]), measured.batch_size, limits.grad_floor, limits.floor_batch_size)]
    if below:
        pytest.skip(f"{name}: ‖g_l‖ is below the floor at layers {below}, so Γ is undefined there and no "
                    "null comparison is interpretable; diagnostic (b) reports it")
    classes = run.data.num_classes
    null = calibration.null_gamma(model, batches, classes, feedback=run.loaded.state.feedback, n=NULL_DRAWS)
    deep_trained = sum(null.trained[1:]) / len(null.trained[1:])
    deep_null = null.draws[:, 1:].mean(dim=1)
    mean, std = float(deep_null.mean()), float(deep_null.std())
    per_layer = ", ".join(f"Γ_{l} {t:+.3f} (null {m:+.3f} ± {s:.3f})"
                          for l, (t, m, s) in enumerate(zip(null.trained, null.null_mean, null.null_std)))
    if abs(deep_trained - mean) <= BAND * std:
        exposed("B7", f"{name}: deep-layer Γ with the training B is {deep_trained:+.3f}, inside the fresh-B "
                f"null {mean:+.3f} ± {std:.3f} (band ±{BAND:g} std, n = {NULL_DRAWS}): any alignment "
                f"claim about layers 1–{len(null.trained) - 1} is unsupported.\n    per layer: {per_layer}")
