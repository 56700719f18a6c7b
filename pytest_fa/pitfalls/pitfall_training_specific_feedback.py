"""Pitfall 4: random feedback matrices are training-specific — Γ is not invariant to
re-drawing them, so bundles store the training B_l."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import calibration as CAL
from pytest_fa.core import diagnostics as D
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.models import build_model
from pytest_fa.pitfalls import Guard
from pytest_fa.pitfalls.regimes import MEANINGFUL_EPOCH, credited_rows
from pytest_fa.training import checkpoint as C
from pytest_fa.training.methods import MethodState, feature_dims, get_method

pytestmark = pytest.mark.fa_pitfall("4")


def regenerate_feedback(num_classes: int, dims: list[int], seed: int) -> list[torch.Tensor]:
    """What a post-hoc script does without the saved B: draw them again from the run's seed."""
    return init_dfa_feedback(num_classes, dims, torch.Generator().manual_seed(seed))


def _naive_load_checkpoint(path, factory=None, input_shape=None, num_classes=None, allow_unknown_method=False,
                           adapt=None, contents=None):
    """Load the weights, ignore the stored B and regenerate them from the recorded seed."""
    bundle = C.load_bundle(path)
    model = build_model(bundle.arch, **bundle.arch_config)
    C.load_weights(model, bundle.state_dict, str(path))
    classes = bundle.arch_config.get("num_classes") or num_classes
    shape = bundle.arch_config.get("input_shape") or input_shape
    feedback = regenerate_feedback(classes, feature_dims(model, shape), bundle.seed or 0)
    state = MethodState(feedback=feedback, config=bundle.method_config)
    return C.LoadedCheckpoint(str(path), model, bundle, state, bundle.method)


GUARD = Guard("pytest_fa.training.checkpoint.load_checkpoint", _naive_load_checkpoint,
              "stored feedback matrices ignored and re-drawn from the bundle's seed")


def per_sample_cosines(model, batches, feedback) -> list[torch.Tensor]:
    """``cos(e_T B_l, g_l)`` per sample for every layer, over all batches."""
    return [D.cosine_per_sample(a_l, g_l) for a_l, g_l in zip(*credited_rows(model, batches, DFACredit(feedback)))]


def deep_mean(cosines: list[torch.Tensor]) -> float:
    return sum(float(c.mean()) for c in cosines[1:]) / (len(cosines) - 1)


def test_reseeded_feedback_gives_another_gamma_on_a_real_dfa_run(degenerate_dfa):
    """Pitfall 4: Γ with the training B is far outside the fresh-B null; a B re-drawn from the seed is not."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    trained_b = degenerate_dfa.feedback
    dims = [b.shape[1] for b in trained_b]
    classes = degenerate_dfa.data.num_classes
    naive_b = [b.to(trained_b[0].device) for b in regenerate_feedback(classes, dims, degenerate_dfa.bundle.seed)]
    assert not any(torch.equal(n, t) for n, t in zip(naive_b, trained_b))
    trained = per_sample_cosines(model, degenerate_dfa.batches, trained_b)
    naive = per_sample_cosines(model, degenerate_dfa.batches, naive_b)
    null = CAL.null_gamma(model, degenerate_dfa.batches, classes, feedback=trained_b, n=20)
    # the calibration module measures the same training-B Γ_l
    own = torch.stack([c.mean() for c in trained]).cpu()
    torch.testing.assert_close(torch.tensor(null.trained, dtype=torch.float64), own, rtol=0, atol=1e-9)
    deep_null = null.draws[:, 1:].mean(dim=1)
    mu, sd = float(deep_null.mean()), float(deep_null.std())
    z_trained = (deep_mean(trained) - mu) / sd
    z_naive = (deep_mean(naive) - mu) / sd
    # measured: training B -0.078 (z = -6), fresh-B null -0.001 ± 0.013
    assert abs(z_trained) > 3, (deep_mean(trained), mu, sd)
    assert abs(z_naive) < 3, (deep_mean(naive), mu, sd)
    assert abs(deep_mean(trained) - deep_mean(naive)) > 0.03, (deep_mean(trained), deep_mean(naive))


def test_bundle_round_trip_gives_the_training_gamma_bit_for_bit(degenerate_dfa, tmp_path):
    """Pitfall 4: a bundle saved and loaded by pytest-fa carries the training B: identical Γ, sample by sample."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    snapshot = {k: v.detach().cpu() for k, v in degenerate_dfa.meaningful.snapshots[MEANINGFUL_EPOCH].items()}
    bundle = dataclasses.replace(degenerate_dfa.meaningful.bundle, state_dict=snapshot, epochs=MEANINGFUL_EPOCH)
    path = C.save_bundle(tmp_path / "dfa_epoch1.pt", bundle)
    loaded = C.load_checkpoint(path)
    assert len(loaded.state.feedback) == len(degenerate_dfa.feedback)
    for stored, trained in zip(loaded.state.feedback, degenerate_dfa.feedback):
        assert torch.equal(stored.cpu(), trained.cpu())
    device = degenerate_dfa.device
    reloaded_model = loaded.model.to(device).eval()
    in_process = per_sample_cosines(model, degenerate_dfa.batches, degenerate_dfa.feedback)
    reloaded = per_sample_cosines(reloaded_model, degenerate_dfa.batches, [b.to(device) for b in loaded.state.feedback])
    for own, back in zip(in_process, reloaded):
        if device.type == "cpu":
            assert torch.equal(own, back)
        else:  # GPU kernels may pick another algorithm for a new model instance
            torch.testing.assert_close(own, back, rtol=0, atol=1e-6)
    assert abs(deep_mean(reloaded) - deep_mean(in_process)) < 1e-9
    assert deep_mean(in_process) < -0.03  # measured -0.078: the training-specific signal survives the trip


@given(seed=fst.seeds(), width=st.sampled_from([8, 16, 32]), depth=st.integers(min_value=1, max_value=3),
       batch=st.integers(min_value=1, max_value=32))
@settings(max_examples=15, deadline=None)
def test_saved_feedback_round_trips_exactly(seed, width, depth, batch):
    """Pitfall 4: for any seed and shape, a reloaded DFA bundle gives the training B and Γ bit for bit."""
    shape, classes = (40,), 10
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("resmlp", input_shape=shape, num_classes=classes, d=width, depth=depth).eval()
    method = get_method("dfa")
    # the trainer's own recipe for the matrices (pytest_fa.training.trainer: a generator seeded seed + 1)
    state = method.setup(model, classes, shape, torch.Generator().manual_seed(seed + 1))
    bundle = C.Bundle(
        arch="resmlp", arch_config=model.config, state_dict=model.state_dict(), method="dfa",
        data={"name": "synthetic"}, method_config=method.config(), feedback=state.feedback, seed=seed,
    )
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, generator=generator)
    y = torch.randint(0, classes, (batch,), generator=generator)
    with tempfile.TemporaryDirectory() as folder:
        loaded = C.load_checkpoint(C.save_bundle(Path(folder) / "dfa.pt", bundle))
    for stored, trained in zip(loaded.state.feedback, state.feedback, strict=True):
        assert torch.equal(stored, trained)
    own = per_sample_cosines(model, [(x, y)], state.feedback)
    back = per_sample_cosines(loaded.model.eval(), [(x, y)], loaded.state.feedback)
    for a, b in zip(own, back, strict=True):
        assert torch.equal(a, b)
