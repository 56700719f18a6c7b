"""Diagnostic (b) decomposed: ``‖g_L‖ · B = gain × ‖e‖`` separates Mode 1 from a confident model.

Real trained models, each in a few seconds on two CPU cores: a DFA net driven through the
floor (Mode 1: the gain collapsed), a BP net that became confident (error-saturated: the
error vanished); both train until they are in their regime, on every realisation. The
arithmetic of the decomposition is checked with hypothesis.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_fa.assertions import assert_grad_above_floor
from pytest_fa.core import diagnostics as D
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.probe import run_probe
from pytest_fa.core.report import diagnose
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.models import build_model
from pytest_fa.core.thresholds import REFERENCE_BATCH_SIZE
from pytest_fa.pitfalls import regimes
from pytest_fa.pitfalls.regimes import torch_threads
from pytest_fa.training.data import eval_batches, load_dataset
from pytest_fa.training.trainer import Recipe, train

ARCH = {"d": 32, "depth": 4}
PAPER = DiagnosticThresholds(b_rule="paper")
PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
UNIT_ROUNDOFF = 2.0**-24


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Run(NamedTuple):
    model: torch.nn.Module
    feedback: list[torch.Tensor]
    headline_acc: float
    batches: list[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="session")
def mode1(fa_realisation):
    """The pitfall suite's degenerate DFA run (d = 256, lr 1e-1 constant): trained until its
    restated median ‖g_L‖ is 50× below the floor, the gain collapsed and ‖h_L‖ exploded."""
    seed, threads = fa_realisation
    run = regimes.degenerate_dfa(seed=seed, threads=threads)
    return Run(run.model, run.feedback, run.bundle.headline_acc, run.batches)


def _restated_g_L(record) -> float:
    return record["g_L"] * record["batch_size"] / REFERENCE_BATCH_SIZE


@pytest.fixture(scope="session")
def confident(fa_realisation):
    """BP on an easy two-class teacher task, trained until the restated median ‖g_L‖ is a third
    of the floor (7–13 epochs over the sweep): 97–99% accuracy, the median error ‖e‖ ≈ 1e-4."""
    seed, threads = fa_realisation
    data = load_dataset("synthetic", num_samples=8000, num_classes=2, d_in=4, teacher_width=8)
    below = DiagnosticThresholds().grad_floor / 3
    with torch_threads(threads):
        result = train(data, "bp", arch_config=ARCH, epochs=40, seed=seed,
                       recipe=Recipe(lr=3e-2, schedule="constant", weight_decay=0.0), device="cpu",
                       on_epoch=lambda model, record: _restated_g_L(record) < below)
    last = result.history[-1]
    assert _restated_g_L(last) < below, f"seed {seed} on {threads} thread(s) did not reach the floor: {last}"
    return Run(result.model, result.state.feedback, result.bundle.headline_acc, eval_batches(data, 8, 128, seed=0))


def _report(run, thresholds=None, with_credit=False):
    credit = DFACredit(run.feedback) if with_credit else None
    return diagnose(run.model, run.batches, headline_acc=run.headline_acc, frozen_acc=0.0,
                    credit=credit, thresholds=thresholds, null_draws=0)


# -- the two real regimes ------------------------------------------------------------------

def test_a_dfa_net_through_the_floor_is_mode_1_under_both_rules(mode1):
    report = _report(mode1, with_credit=True)
    b = report.diagnostics["b"]
    limits = DiagnosticThresholds()
    assert b.value < limits.grad_floor
    assert b.components["gain"] < limits.gain_floor / 10, b.components  # collapsed, with a decade to spare
    assert b.components["error_norm"] > 0.5  # the error did not vanish: the network is not confident
    assert b.fires and b.submode == D.FLOOR_SUBMODES[1]
    assert "(b: Mode 1: backward gain collapsed)" in report.verdict
    assert _report(mode1, PAPER).diagnostics["b"].fires
    deepest = report.layers[-1]
    assert deepest.gamma is None and "below the floor" in deepest.gamma_status
    assert deepest.gain < limits.gain_floor


def test_a_confident_bp_net_at_the_floor_is_error_saturated_not_walked_back(confident):
    report = _report(confident)
    b = report.diagnostics["b"]
    limits = DiagnosticThresholds()
    assert b.value < limits.grad_floor, "the regime changed: the reference is no longer at the floor"
    assert b.components["gain"] > 10 * limits.gain_floor, b.components
    assert b.components["error_norm"] < 1e-3
    assert not b.fires and b.submode == D.FLOOR_SUBMODES[2]
    assert "(b" not in report.verdict
    paper = _report(confident, PAPER)
    assert paper.diagnostics["b"].fires and paper.diagnostics["b"].value == b.value
    assert paper.fired == ["b"] and "(b: error-saturated)" in paper.verdict  # the paper walks it back


def test_the_gain_separates_the_regimes_by_decades(mode1, confident):
    collapsed = _report(mode1).diagnostics["b"].components["gain"]
    healthy = _report(confident).diagnostics["b"].components["gain"]
    assert healthy / collapsed > 1e3
    assert collapsed < DiagnosticThresholds().gain_floor < healthy


def test_assert_grad_above_floor_follows_the_rule(mode1, confident):
    with pytest.raises(AssertionError, match="Mode 1"):
        assert_grad_above_floor(_report(mode1))
    assert_grad_above_floor(_report(confident))
    with pytest.raises(AssertionError):
        assert_grad_above_floor(_report(confident, PAPER))


def test_scaling_the_residual_stream_divides_the_gain_and_keeps_the_error(bp_trained, small_data):
    """The Mode-1 mechanism exactly: h_l → c·h_l (embedding and every branch output scaled
    by c) leaves the logits unchanged behind the terminal LayerNorm and divides the gain by c."""
    model = bp_trained[0].model
    batches = eval_batches(small_data, 8, 128, seed=0)
    base = _gain_and_error(model, batches)
    c = 1e5
    scaled = copy.deepcopy(model)
    with torch.no_grad():
        for layer in [scaled.embed, *(block.w2 for block in scaled.blocks)]:
            layer.weight.mul_(c)
            layer.bias.mul_(c)
    gain, error = _gain_and_error(scaled, batches)
    assert gain * c == pytest.approx(base[0], rel=1e-3)
    assert error == pytest.approx(base[1], rel=1e-3)
    report = diagnose(scaled, batches, frozen_acc=0.0, headline_acc=1.0, null_draws=0)
    assert report.diagnostics["b"].submode == D.FLOOR_SUBMODES[1]


def _gain_and_error(model, batches):
    probe = run_probe(model, batches)
    gain = D.median_defined(D.backward_gain(probe.grad_norms[-1], probe.logit_grad_norms))
    return gain, float((probe.logit_grad_norms * probe.batch_size).median())


# -- the arithmetic --------------------------------------------------------------------------

@PROPERTY
@given(seed=st.integers(0, 2**16), batch=st.integers(2, 48), keep=st.integers(1, 48))
def test_the_gain_of_a_sample_does_not_depend_on_its_batch(seed, batch, keep):
    """``‖g_{L,i}‖ = gain_i · ‖e_i‖ / B``: the 1/B is all the batch contributes."""
    keep = min(keep, batch)
    torch.manual_seed(seed)
    model = build_model("resmlp", input_shape=[8], num_classes=5, d=16, depth=2).eval()
    x, y = torch.randn(batch, 8), torch.randint(0, 5, (batch,))
    whole, part = run_probe(model, [(x, y)]), run_probe(model, [(x[:keep], y[:keep])])
    for layer in range(3):
        torch.testing.assert_close(
            D.backward_gain(whole.grad_norms[layer], whole.logit_grad_norms)[:keep],
            D.backward_gain(part.grad_norms[layer], part.logit_grad_norms), rtol=1e-4, atol=0.0,
        )
    exact = (torch.softmax(model(x).double(), -1) - F.one_hot(y, 5)).norm(dim=1)
    torch.testing.assert_close(whole.logit_grad_norms * batch, exact, rtol=1e-5, atol=1e-7)


@PROPERTY
@given(seed=st.integers(0, 2**16), margin=st.floats(0.0, 30.0), classes=st.integers(2, 20))
def test_the_float32_output_error_is_exact_to_the_roundoff_over_its_norm(seed, margin, classes):
    """In float32 the true-class entry ``p_y − 1`` cancels: the relative error of ``e`` is
    bounded by a few unit roundoffs times ``1 + 1/‖e‖``, and reaches 1 once ‖e‖ ~ 1e-7."""
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(16, classes, generator=generator)
    y = torch.randint(0, classes, (16,), generator=generator)
    z[torch.arange(16), y] += margin
    logits = z.clone().requires_grad_(True)
    (used,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), logits)
    rel = D.output_error_rel_error(used, z, y)
    exact = (torch.softmax(z.double(), -1) - F.one_hot(y, classes)).norm(dim=1)
    bound = 16 * UNIT_ROUNDOFF * (1 + 1 / exact)
    assert bool((rel <= bound).all()), (rel.max().item(), bound.min().item())
    exact_rel = D.output_error_rel_error(
        (torch.softmax(z.double(), -1) - F.one_hot(y, classes)), z, y
    )
    assert float(exact_rel.max()) < 1e-12


@PROPERTY
@given(
    g_ref=st.floats(1e-20, 1.0), gain=st.floats(1e-12, 10.0),
    floor=st.floats(1e-12, 1e-3), gain_floor=st.floats(1e-8, 1.0),
)
def test_the_sub_modes_partition_the_floor(g_ref, gain, floor, gain_floor):
    fires, submode = D.floor_rule(g_ref, gain, floor, gain_floor)
    assert (submode == D.FLOOR_SUBMODES[0]) == (g_ref >= floor)
    if g_ref < floor:
        assert (submode == D.FLOOR_SUBMODES[1]) == (gain < gain_floor)
    assert fires == (submode == D.FLOOR_SUBMODES[1])
    assert D.floor_rule(g_ref, gain, floor, gain_floor, "paper") == (g_ref < floor, submode)
    assert D.floor_rule(g_ref, math.nan, floor, gain_floor)[1] in (D.FLOOR_SUBMODES[0], D.FLOOR_SUBMODES[2])
