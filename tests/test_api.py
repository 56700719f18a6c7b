"""pytest_fa.check(): the protocol in one call from a loop or a notebook, on any form of data."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import pytest_fa
from pytest_fa.api import _eval_samples
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.report import diagnose
from pytest_fa.errors import DataError, FABudgetWarning, ModelInterfaceError
from pytest_fa.training.data import eval_batches

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dfa(dfa_trained):
    return dfa_trained[0]


@pytest.fixture(scope="module")
def tensors(small_data):
    return small_data.x_test, small_data.y_test


def numbers(report):
    return (
        [(row.h_norm, row.g_norm, row.gamma) for row in report.layers],
        {k: d.value for k, d in report.diagnostics.items()},
        report.headline_acc,
    )


def test_check_on_tensors_is_diagnose_on_the_same_batches(dfa, tensors):
    credit = DFACredit(dfa.state.feedback)
    report = pytest_fa.check(dfa.model, tensors, credit=credit, frozen_acc=0.3, headline_acc=0.4)
    expected = diagnose(dfa.model, eval_batches(tensors), credit=credit, frozen_acc=0.3, headline_acc=0.4)
    assert numbers(report) == numbers(expected)
    assert report.verdict == expected.verdict and report.num_batches == 8 and report.batch_size == 128


def test_a_loader_a_dataset_and_tensors_give_the_same_report(dfa, small_data, tensors):
    credit = DFACredit(dfa.state.feedback)
    loader = DataLoader(TensorDataset(*tensors), batch_size=50)
    from_loader = pytest_fa.check(dfa.model, loader, credit=credit, frozen_acc=0.3)
    from_tensors = pytest_fa.check(dfa.model, tensors, credit=credit, frozen_acc=0.3)
    from_dataset = pytest_fa.check(dfa.model, small_data, credit=credit, frozen_acc=0.3)
    assert numbers(from_loader) == numbers(from_tensors) == numbers(from_dataset)
    assert from_loader.context["eval_source"] == "DataLoader"


def test_the_headline_defaults_to_the_accuracy_on_every_sample_given(dfa, tensors):
    x, y = tensors
    report = pytest_fa.check(dfa.model, tensors, frozen_acc=0.0)
    with torch.no_grad():
        expected = float((dfa.model.eval()(x).argmax(-1) == y).double().mean())
    assert report.headline_acc == pytest.approx(expected, abs=1e-12)
    assert f"all {len(y)} samples" in report.context["headline_acc"]


def test_without_frozen_acc_the_verdict_is_incomplete_and_says_what_to_pass(dfa, tensors):
    report = pytest_fa.check(dfa.model, tensors)
    assert report.verdict == "incomplete: (d) not evaluated"
    assert "frozen_acc" in report.diagnostics["d"].detail


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(loader_batch=st.integers(1, 400), seed=st.integers(0, 3))
def test_the_loaders_batching_does_not_change_the_eval_batches(tensors, loader_batch, seed):
    loader = DataLoader(TensorDataset(*tensors), batch_size=loader_batch)
    for (xa, ya), (xb, yb) in zip(eval_batches(_eval_samples(loader), seed=seed), eval_batches(tensors, seed=seed)):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


@pytest.mark.parametrize(
    "make, phrase",
    [
        (lambda x, y: (x[:500], y[:500]), "has 500 samples but 8 batches of 128 need 1024"),
        (lambda x, y: (x, y[:-1]), "inputs but"),
        (lambda x, y: (x, y.float()), "class indices"),
        (lambda x, y: (x, torch.nn.functional.one_hot(y)), "y.argmax(dim=1)"),
        (lambda x, y: (torch.where(torch.arange(len(x))[:, None] == 3, float("nan"), x), y), "NaN or inf"),
        (lambda x, y: [x[i : i + 10] for i in range(0, 100, 10)], "needs (x, y) batches"),
        (lambda x, y: DataLoader(TensorDataset(x[:0], y[:0]), batch_size=8), "yielded no batches"),
        (lambda x, y: {"x": x, "y": y}, "not dict"),
    ],
    ids=["too-few", "length-mismatch", "float-labels", "one-hot", "nan", "not-pairs", "empty", "dict"],
)
def test_bad_data_is_a_clear_error(dfa, tensors, make, phrase):
    with pytest.raises(DataError, match=None) as info:
        pytest_fa.check(dfa.model, make(*tensors), frozen_acc=0.5)
    assert phrase in str(info.value)


@pytest.mark.parametrize("frozen_acc", [65.0, -0.1, "0.6"])
def test_a_frozen_accuracy_that_is_not_a_fraction_is_refused(dfa, tensors, frozen_acc):
    with pytest.raises(DataError, match="fraction in \\[0, 1\\]"):
        pytest_fa.check(dfa.model, tensors, frozen_acc=frozen_acc)


# -- the command line's rules, and the model left as it was ---------------------------------------
@pytest.mark.parametrize(
    "options, phrase",
    [
        ({"batch_size": 1}, "batch_size=1: an eval batch needs at least 2 samples"),
        ({"batch_size": 0}, "batch_size=0: an eval batch needs at least 2 samples"),
        ({"num_batches": 4}, "num_batches=4: diagnostic (c) needs at least 8 disjoint batches"),
        ({"num_batches": 8.0}, "num_batches=8.0: give a whole number"),
        ({"device": "cudax"}, "device='cudax': use auto, cpu or cuda (cuda:N for GPU number N = 0, 1, …)"),
        ({"seed": "1"}, "seed must be an integer, got '1'"),
    ],
    ids=["batch-of-one", "batch-of-none", "four-batches", "float-count", "device-name", "seed-text"],
)
def test_check_applies_the_command_lines_rules(dfa, tensors, options, phrase):
    with pytest.raises(DataError) as info:
        pytest_fa.check(dfa.model, tensors, frozen_acc=0.3, **options)
    assert phrase in str(info.value)


def _undrawn_index(n):
    drawn = set(torch.randperm(n, generator=torch.Generator().manual_seed(0))[: 8 * 128].tolist())
    return next(i for i in range(n) if i not in drawn)


@pytest.mark.parametrize("where", ["drawn", "not-drawn"])
@pytest.mark.parametrize("bad", [15, -1])
def test_a_label_outside_the_models_classes_is_refused(dfa, tensors, where, bad):
    x, y = tensors
    y = y.clone()
    y[0 if where == "drawn" else _undrawn_index(len(y))] = bad
    with pytest.raises(DataError) as info:
        pytest_fa.check(dfa.model, (x, y), frozen_acc=0.3)
    assert f"label {bad} is not a class of the model: its logits have 10 classes" in str(info.value)
    assert "[0, 10)" in str(info.value)


def test_eval_batches_of_one_class_are_refused(dfa, tensors):
    x, y = tensors
    with pytest.raises(DataError) as info:
        pytest_fa.check(dfa.model, (x, torch.full_like(y, 3)), frozen_acc=0.0)
    assert "every label in the eval batches is 3" in str(info.value)
    assert "at least two classes" in str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_half_precision_model_is_measured_through_a_float32_copy(dfa, tensors, dtype):
    import copy

    from pytest_fa.training.trainer import accuracy

    half = copy.deepcopy(dfa.model).to(dtype)
    before = {k: v.clone() for k, v in half.state_dict().items()}
    report = pytest_fa.check(half, tensors, frozen_acc=0.0, device="auto")
    upcast = copy.deepcopy(half).float()
    assert report.headline_acc == accuracy(upcast, *tensors)
    assert report.dtype.startswith("float32 (weights stored in")
    assert all(torch.equal(v, before[k]) and v.dtype == dtype for k, v in half.state_dict().items())


def test_check_leaves_each_submodules_mode_as_it_was(dfa, tensors):
    import copy

    model = copy.deepcopy(dfa.model).train()
    model.out_ln.eval()  # a frozen submodule inside a model in training mode
    pytest_fa.check(model, tensors, frozen_acc=0.0)
    assert model.training and not model.out_ln.training
    assert all(module.training for name, module in model.named_modules() if not name.startswith("out_ln"))


class _ReturnsHiddenWithOtherNames(torch.nn.Module):
    """Takes ``return_hidden`` but names its modules ``stem``, ``layers`` and ``classifier``."""

    def __init__(self):
        super().__init__()
        self.stem, self.layers, self.classifier = torch.nn.Linear(40, 8), torch.nn.ModuleList(), torch.nn.Linear(8, 10)

    def forward(self, x, return_hidden=False):
        h = self.stem(x)
        return (self.classifier(h), [h]) if return_hidden else self.classifier(h)


def test_a_model_without_the_named_modules_is_told_what_is_looked_for_and_how_to_adapt_it(tensors):
    with pytest.raises(ModelInterfaceError) as info:
        pytest_fa.check(_ReturnsHiddenWithOtherNames(), tensors, frozen_acc=0.3)
    message = str(info.value)
    assert "has neither `embed` nor `patch_embed`" in message
    assert "pytest_fa.adapt(model, ['embed', 'blocks.*']), your modules' names in place of these" in message


def test_a_control_trained_for_fewer_epochs_than_the_model_is_named(dfa, tensors):
    budgets = r"check\(\): the frozen-blocks control was trained for 2 epochs but the model for 10"
    with pytest.warns(FABudgetWarning, match=budgets):
        pytest_fa.check(dfa.model, tensors, frozen_acc=0.3, trained_epochs=10, frozen_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FABudgetWarning)
        pytest_fa.check(dfa.model, tensors, frozen_acc=0.3, trained_epochs=10, frozen_epochs=10)
        pytest_fa.check(dfa.model, tensors, frozen_acc=0.3, trained_epochs=10)  # one budget stated: no claim
