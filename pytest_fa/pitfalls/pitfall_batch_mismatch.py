"""Pitfall B3: the credit signal and the BP reference gradient are computed on different
batches, so Γ measures how alike two batches are, not the quality of the credit."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe
from pytest_fa.core.credit import BPCredit, DFACredit
from pytest_fa.core.interface import forward_hidden
from pytest_fa.core.reference import reference_pass
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.regimes import MEANINGFUL_EPOCH
from pytest_fa.training.data import eval_batches

pytestmark = pytest.mark.fa_pitfall("B3")

BP_CREDIT = BPCredit(lambda t: t.reshape(t.shape[0], -1))  # backprop's own gradient as the credit


def _naive_run_probe(model, eval_batches, credit=None, device=None):
    """The probe of a two-loader script: the credit comes from the *next* batch's forward pass."""
    batches = list(eval_batches)
    if credit is not None:
        upcoming = iter(batches[1:] + batches[:1])

        def next_batch_credit(x, y, logits, hiddens):
            xn, yn = next(upcoming)
            xn, yn = xn.to(x.device, x.dtype), yn.to(y.device)
            logits_n, hiddens_n = forward_hidden(model, xn)
            return credit(xn, yn, logits_n, hiddens_n)

        credit = next_batch_credit
    model.eval()
    return probe.probe_batches(model, batches, credit, len(batches[0][0]))


GUARD = Guard("pytest_fa.core.probe.run_probe", _naive_run_probe,
              "credit evaluated on the next batch instead of the reference's forward pass",
              Witness(bundle="meaningful"))


def naive_gamma(model, batches, credit_of, shift: int = 1) -> list[float]:
    """Γ_l as a script with two loaders computes it: credit from batch k, reference from k + shift."""
    per_batch = []
    for k, (x, y) in enumerate(batches):
        x_ref, y_ref = batches[(k + shift) % len(batches)]
        credits = reference_pass(model, x, y, credit_of).credits
        grads = reference_pass(model, x_ref, y_ref).rows
        per_batch.append([D.cosine_per_sample(a, g) for a, g in zip(credits, grads)])
    return [float(torch.cat(layer).mean()) for layer in zip(*per_batch)]


def matched_gamma(model, batches, credit) -> list[float]:
    """Γ_l from pytest-fa's probe: credit and reference from one forward pass."""
    measured = probe.run_probe(model, batches, credit=credit)
    return [D.mean_defined(c)[0] for c in measured.cosines]


def test_mismatched_batches_turn_backprop_itself_into_a_weak_credit(healthy_bp):
    """Pitfall B3: BP's own gradient, compared across batches, reads as Γ ≈ 0.06 instead of 1."""
    model = healthy_bp.model_at(max(healthy_bp.snapshots))
    matched = matched_gamma(model, healthy_bp.batches, BP_CREDIT)
    mismatched = naive_gamma(model, healthy_bp.batches, BP_CREDIT)
    # measured: matched 1.000 on every layer; mismatched +0.069 +0.066 +0.064 +0.060 +0.050
    assert all(g > 1 - 1e-9 for g in matched), matched
    assert all(-0.2 < g < 0.3 for g in mismatched), mismatched


def test_mismatched_batches_erase_the_real_deep_layer_signal_of_dfa(degenerate_dfa):
    """Pitfall B3: on real DFA the same-batch deep Γ is clearly nonzero; across batches it reads ≈ 0."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    credit = DFACredit(degenerate_dfa.feedback)
    matched = matched_gamma(model, degenerate_dfa.batches, credit)
    # measured (seed 42, one thread): matched -0.008 -0.050 -0.081 -0.086 -0.095, shift 1..4
    # every layer within ±0.015; over the sweep a single deep layer can sit near 0, the deep
    # mean lies between -0.064 and -0.078
    deep = slice(1, None)
    deep_mean = sum(matched[deep]) / len(matched[deep])
    assert abs(deep_mean) > 0.04, matched
    for shift in (1, 2, 3):
        mismatched = naive_gamma(model, degenerate_dfa.batches, credit, shift)
        shifted_mean = sum(mismatched[deep]) / len(mismatched[deep])
        assert abs(shifted_mean) < abs(deep_mean) / 2, (shift, matched, mismatched)


class RecordingCredit:
    """A credit signal that keeps what it was given and returns DFA's credit for it."""

    def __init__(self, feedback):
        self.inner = DFACredit(feedback)
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def __call__(self, x, y, logits, hiddens):
        self.seen.append((x.detach().clone(), y.clone(), logits.detach().clone()))
        return self.inner(x, y, logits, hiddens)


@given(batch_size=st.integers(1, 64), num_batches=st.integers(2, 4), seed=fst.seeds())
@settings(max_examples=10, deadline=None)
def test_the_probe_evaluates_the_credit_on_the_reference_forward_pass(degenerate_dfa, batch_size, num_batches, seed):
    """Pitfall B3: pytest-fa's probe hands the credit the very batch (and logits) whose gradient
    is the reference, and per-sample Γ does not depend on the batching."""
    model = degenerate_dfa.meaningful_model_at(MEANINGFUL_EPOCH)
    data = degenerate_dfa.data
    batches = eval_batches(data, num_batches, batch_size, seed=seed % 1000)
    recorder = RecordingCredit(degenerate_dfa.feedback)
    measured = probe.run_probe(model, batches, credit=recorder)

    assert len(recorder.seen) == len(batches)
    for (x, y), (seen_x, seen_y, seen_logits) in zip(batches, recorder.seen):
        assert torch.equal(seen_x, x) and torch.equal(seen_y, y)
        with torch.no_grad():
            torch.testing.assert_close(seen_logits, model(x), rtol=0, atol=0)

    # the same samples as one batch: per-sample Γ is unchanged by the split
    x_all = torch.cat([x for x, _ in batches])
    y_all = torch.cat([y for _, y in batches])
    whole = probe.run_probe(model, [(x_all, y_all)], credit=DFACredit(degenerate_dfa.feedback))
    for split, joined in zip(measured.cosines, whole.cosines):
        torch.testing.assert_close(split, joined, rtol=0, atol=1e-4)

    # and backprop's own gradient as the credit is aligned with the reference exactly
    exact = probe.run_probe(model, batches, credit=BP_CREDIT)
    for cos in exact.cosines:
        assert (cos - 1).abs().max() < 1e-9
