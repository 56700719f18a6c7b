"""Unit tests of ``pytest_fa.core.calibration``: the fresh-feedback null Γ against a hand
computation in plain torch, its independence from the training feedback, its seeding,
the ``NullCalibration`` statistics and the argument checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core.calibration import NullCalibration, null_gamma
from pytest_fa.core.credit import init_dfa_feedback
from pytest_fa.models import ResMLP, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 10
IN = 12
D = 16
DEPTH = 3
LAYERS = DEPTH + 1


def _resmlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=[IN], num_classes=CLASSES, d=D, depth=DEPTH).eval()


def _batches(sizes=(16, 16), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, IN, generator=g), torch.randint(0, CLASSES, (b,), generator=g)) for b in sizes]


def _seeded_draw(seed: int, index: int, dims, classes: int = CLASSES):
    """The module's documented draw: ``B_l ~ N(0, 1/classes)`` of shape (classes, F_l), one
    generator per draw seeded ``seed * 100_003 + index`` (the same B for every batch)."""
    g = torch.Generator().manual_seed(seed * 100_003 + index)
    return [torch.randn(classes, f, generator=g) / math.sqrt(classes) for f in dims]


def _per_sample_cosines(model, batches, feedback) -> torch.Tensor:
    """(L+1, N) float64: cos(e_T B_l, g_l) per sample, samples of all batches pooled in order."""
    columns = []
    for x, y in batches:
        logits, hiddens = model(x, return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens)
        e = torch.softmax(logits.detach(), dim=-1) - F.one_hot(y, CLASSES).float()
        rows = []
        for b, g in zip(feedback, grads):
            a, g = e.double() @ b.double(), g.reshape(len(y), -1).double()  # the null works in float64
            rows.append((a * g).sum(dim=1) / (a.norm(dim=1) * g.norm(dim=1)))
        columns.append(torch.stack(rows))
    return torch.cat(columns, dim=1)


def _hand_gamma(model, batches, feedback) -> torch.Tensor:
    return _per_sample_cosines(model, batches, feedback).mean(dim=1)


def _hand_draws(model, batches, n: int, seed: int) -> torch.Tensor:
    return torch.stack([_hand_gamma(model, batches, _seeded_draw(seed, i, [D] * LAYERS)) for i in range(n)])


def _independent_feedback(seed: int = 999):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(CLASSES, D, generator=g) / math.sqrt(CLASSES) for _ in range(LAYERS)]


# ---------------------------------------------------------------- the draws


def test_draws_are_gamma_under_the_seeded_fresh_feedback():
    model, batches = _resmlp(), _batches()
    null = null_gamma(model, batches, CLASSES, n=4, seed=3)
    hand = _hand_draws(model, batches, n=4, seed=3)
    assert null.draws.shape == (4, LAYERS) and null.draws.dtype == torch.float64
    torch.testing.assert_close(null.draws, hand, rtol=1e-10, atol=1e-12)


def test_null_mean_and_sd_match_a_hand_recomputation_from_the_same_draws():
    model, batches = _resmlp(), _batches()
    n = 6
    null = null_gamma(model, batches, CLASSES, n=n, seed=1)
    hand = _hand_draws(model, batches, n=n, seed=1)
    mean = hand.sum(dim=0) / n
    sd = ((hand - mean) ** 2).sum(dim=0).div(n - 1).sqrt()  # sample sd over the draws (n − 1)
    assert null.null_mean == pytest.approx(mean.tolist(), rel=1e-9, abs=1e-12)
    assert null.null_std == pytest.approx(sd.tolist(), rel=1e-8, abs=1e-12)
    assert all(s > 0 for s in null.null_std)


def test_gamma_is_the_mean_over_all_samples_of_all_batches():
    """Γ pools the samples: with batches of 8 and 32 that is not the mean of the batch means."""
    model, batches = _resmlp(), _batches(sizes=(8, 32))
    trained = _independent_feedback()
    null = null_gamma(model, batches, CLASSES, feedback=trained, n=2, seed=0)
    pooled = _hand_gamma(model, batches, trained)
    by_batch = (_hand_gamma(model, batches[:1], trained) + _hand_gamma(model, batches[1:], trained)) / 2
    assert (pooled - by_batch).abs().max() > 1e-4  # the two statistics differ here
    assert null.trained == pytest.approx(pooled.tolist(), rel=1e-9, abs=1e-12)


def test_draws_do_not_depend_on_the_training_feedback():
    model, batches = _resmlp(), _batches()
    with_b = null_gamma(model, batches, CLASSES, feedback=_independent_feedback(), n=5, seed=2)
    without = null_gamma(model, batches, CLASSES, n=5, seed=2)
    assert without.trained is None and without.z_scores() is None
    assert with_b.trained is not None and len(with_b.trained) == LAYERS
    torch.testing.assert_close(with_b.draws, without.draws, rtol=0.0, atol=0.0)


def test_draws_are_fresh_distinct_and_reproducible_from_the_seed():
    model, batches = _resmlp(), _batches()
    trained = _independent_feedback()
    n = 8
    torch.manual_seed(11)
    null = null_gamma(model, batches, CLASSES, feedback=trained, n=n, seed=4)
    torch.manual_seed(12)  # the global RNG plays no part: only `seed` picks the draws
    again = null_gamma(model, batches, CLASSES, n=n, seed=4)
    torch.testing.assert_close(null.draws, again.draws, rtol=0.0, atol=0.0)
    # every pair of draws differs: each is a fresh set of B, not one B repeated
    for i in range(n):
        for j in range(i + 1, n):
            assert (null.draws[i] - null.draws[j]).abs().max() > 1e-6, (i, j)
    # the training B is not among them
    own = torch.tensor(null.trained, dtype=torch.float64)
    assert all((draw - own).abs().max() > 1e-6 for draw in null.draws)
    # another seed, other draws
    other = null_gamma(model, batches, CLASSES, n=n, seed=5)
    assert (other.draws - null.draws).abs().max() > 1e-6


def test_the_trained_runs_feedback_is_not_among_the_default_null(dfa_trained, small_data):
    """The real DFA run (trained with seed 42): the n = 20 null draws are not its B."""
    result, _ = dfa_trained
    model = copy.deepcopy(result.model).eval()  # the session fixture stays as it was
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(small_data.y_test), generator=g)[:64]
    batches = [(small_data.x_test[i], small_data.y_test[i]) for i in order.split(32)]
    null = null_gamma(model, batches, small_data.num_classes, feedback=result.state.feedback)
    assert null.draws.shape == (20, len(result.state.feedback))
    own = torch.tensor(null.trained, dtype=torch.float64)
    assert min(float((draw - own).abs().max()) for draw in null.draws) > 1e-6


def test_the_null_never_reproduces_a_training_seed(dfa_trained, small_data):
    result, _ = dfa_trained
    model = copy.deepcopy(result.model).eval()  # the session fixture stays as it was
    batches = [(small_data.x_test[:32], small_data.y_test[:32])]
    null = null_gamma(model, batches, small_data.num_classes, feedback=result.state.feedback, n=44)
    own = torch.tensor(null.trained, dtype=torch.float64)
    assert min(float((draw - own).abs().max()) for draw in null.draws) > 1e-6


def test_null_mean_is_near_zero_for_random_feedback_on_random_data():
    """Γ under a random B is symmetric about 0 (B and −B are equally likely): the mean over
    n draws lies within 3 sd / √n of 0 (fixed seed, so the check is deterministic)."""
    model, batches = _resmlp(), _batches(sizes=(32, 32), seed=7)
    n = 40
    null = null_gamma(model, batches, CLASSES, n=n, seed=0)
    for layer, (m, s) in enumerate(zip(null.null_mean, null.null_std)):
        assert 0 < s < 0.5, (layer, s)
        assert abs(m) < 3 * s / math.sqrt(n), (layer, m, s)


# ---------------------------------------------------------------- mode and arguments


class DropoutResMLP(ResMLP):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = nn.Dropout(0.5)

    def embed_input(self, x):
        return self.drop(self.embed(x.flatten(1)))


@pytest.mark.parametrize("train_before", [True, False])
def test_eval_mode_is_used_and_the_callers_mode_restored(train_before):
    torch.manual_seed(0)
    model = DropoutResMLP(input_shape=[IN], num_classes=CLASSES, d=D, depth=DEPTH).train(train_before)
    batches = _batches()
    null = null_gamma(model, batches, CLASSES, n=3, seed=0)
    assert model.training is train_before
    assert all(m.training is train_before for m in model.modules())
    model.eval()
    torch.testing.assert_close(null.draws, _hand_draws(model, batches, n=3, seed=0), rtol=1e-10, atol=1e-12)
    model.train()
    torch.manual_seed(5)
    assert not torch.allclose(null.draws, _hand_draws(model, batches, n=3, seed=0))  # dropout matters


@pytest.mark.parametrize("n", [1, 0, -3])
def test_fewer_than_two_draws_is_a_value_error(n):
    with pytest.raises(ValueError, match="n ≥ 2"):
        null_gamma(_resmlp(), _batches(), CLASSES, n=n)


def test_two_draws_is_enough():
    null = null_gamma(_resmlp(), _batches(), CLASSES, n=2)
    assert null.draws.shape == (2, LAYERS)
    assert all(math.isfinite(s) and s > 0 for s in null.null_std)


def test_null_gamma_works_under_no_grad():
    """Like run_probe, the null takes its own gradients: a caller's no_grad() changes nothing."""
    model, batches = _resmlp(), _batches()
    outside = null_gamma(model, batches, CLASSES, n=3, seed=6)
    with torch.no_grad():
        inside = null_gamma(model, batches, CLASSES, n=3, seed=6)
    torch.testing.assert_close(inside.draws, outside.draws, rtol=0.0, atol=0.0)


# ---------------------------------------------------------------- NullCalibration


def test_null_calibration_statistics_by_hand():
    draws = torch.tensor([[0.10, -0.02, 0.30], [0.00, 0.02, 0.10], [-0.10, 0.06, 0.20]], dtype=torch.float64)
    trained = [0.20, -0.10, 0.20]
    cal = NullCalibration(draws, trained)
    mean = [0.0, 0.02, 0.2]
    sd = [0.1, 0.04, 0.1]  # sample sd, n − 1 = 2
    assert cal.null_mean == pytest.approx(mean, abs=1e-12)
    assert cal.null_std == pytest.approx(sd, abs=1e-12)
    assert cal.z_scores() == pytest.approx([2.0, -3.0, 0.0], abs=1e-9)
    deep_mean, deep_sd = cal.deep_null()
    assert deep_mean == pytest.approx((0.06 + 0.6) / 6, abs=1e-12)
    assert deep_sd == pytest.approx((0.04 + 0.1) / 2, abs=1e-12)
    all_mean, all_sd = cal.deep_null(first_layer=0)
    assert all_mean == pytest.approx(0.66 / 9, abs=1e-12)
    assert all_sd == pytest.approx(0.24 / 3, abs=1e-12)
    assert NullCalibration(draws, None).z_scores() is None


def test_z_score_without_spread_is_signed_infinity_or_nan_on_the_mean():
    cal = NullCalibration(torch.tensor([[0.1, 0.1, 0.2], [0.1, 0.1, 0.4]], dtype=torch.float64), [0.5, 0.1, 0.3])
    z = cal.z_scores()
    assert z[0] == float("inf")
    assert math.isnan(z[1])
    assert z[2] == pytest.approx(0.0, abs=1e-9)
    below = NullCalibration(torch.tensor([[0.1], [0.1]], dtype=torch.float64), [-0.5]).z_scores()
    assert below == [float("-inf")]


def test_inputs_null_gamma_cannot_use_are_refused():
    from pytest_fa.errors import DataError, FeedbackError

    model, batches = _resmlp(), _batches(sizes=(16,), seed=1)
    with pytest.raises(DataError, match="at least one eval batch"):
        null_gamma(model, [], CLASSES, n=2)
    with pytest.raises(DataError, match=f"num_classes={CLASSES + 1}, but the model has {CLASSES} outputs"):
        null_gamma(model, batches, CLASSES + 1, n=2)
    short = init_dfa_feedback(CLASSES, [16] * 3, torch.Generator().manual_seed(0))
    with pytest.raises(FeedbackError, match="expected 4 feedback matrices"):
        null_gamma(model, batches, CLASSES, feedback=short, n=2)
