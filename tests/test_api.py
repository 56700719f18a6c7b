"""pytest_fa.check(): the protocol in one call from a loop or a notebook, on any form of data."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, TensorDataset

import pytest_fa
from pytest_fa.api import batches_from
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.report import diagnose
from pytest_fa.errors import DataError

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
    expected = diagnose(dfa.model, batches_from(tensors), credit=credit, frozen_acc=0.3, headline_acc=0.4)
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
    for (xa, ya), (xb, yb) in zip(batches_from(loader, seed=seed), batches_from(tensors, seed=seed)):
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
