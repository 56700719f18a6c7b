"""Pitfall 5: the aggregation order over layers, samples and batches moves Γ — by several
times, and across zero; pytest-fa's per-sample Γ_l does not depend on the batching."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe as P
from pytest_fa.core import report as R
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed

pytestmark = pytest.mark.fa_pitfall("5")

MEANINGFUL_EPOCHS = (1, 2)  # ‖g_L‖ ≈ 9e-6 and 4e-7 at batch 128: above the floor, Γ defined everywhere


def _naive_cosine_per_sample(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Order (ii) as a drop-in: every row gets the cosine of the batch means."""
    batch = F.cosine_similarity(a.double().mean(0), g.double().mean(0), dim=0, eps=0.0)
    return batch.expand(a.shape[0])


GUARD = Guard("pytest_fa.core.diagnostics.cosine_per_sample", _naive_cosine_per_sample,
              "per-sample cosine replaced by the cosine of batch means (order ii)", Witness(bundle="meaningful"))


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    """Cosine of two flat vectors, float64, no eps (written as the field writes it)."""
    return float(F.cosine_similarity(x.double().reshape(-1), y.double().reshape(-1), dim=0, eps=0.0))


def credit_and_reference(model, batches, credit):
    """Per batch: ``([a_l], [g_l])`` as per-sample rows, both from one forward pass."""
    return [reference_pass(model, x, y, credit).credited_rows() for x, y in batches]


def order_pytest_fa(per_batch) -> list[float]:
    """(i) per layer: per-sample cosines over all samples, then the mean."""
    return [float(torch.cat([D.cosine_per_sample(a[l], g[l]) for a, g in per_batch]).mean())
            for l in range(len(per_batch[0][0]))]


def order_batch_mean(per_batch) -> list[float]:
    """(ii) per layer: cosine of the batch-mean vectors, averaged over batches."""
    return [sum(_cos(a[l].mean(0), g[l].mean(0)) for a, g in per_batch) / len(per_batch)
            for l in range(len(per_batch[0][0]))]


def order_flattened(per_batch) -> list[float]:
    """(iii) per layer: one cosine of the flattened samples × features."""
    return [_cos(torch.cat([a[l] for a, _ in per_batch]), torch.cat([g[l] for _, g in per_batch]))
            for l in range(len(per_batch[0][0]))]


def order_global(per_batch) -> float:
    """(iii) global: one cosine over all samples and all layers concatenated."""
    a = torch.cat([t.reshape(-1) for a, _ in per_batch for t in a])
    g = torch.cat([t.reshape(-1) for _, g in per_batch for t in g])
    return _cos(a, g)


def aggregates(per_batch) -> dict[str, float]:
    mean = lambda values: sum(values) / len(values)  # noqa: E731
    return {
        "(i) per-sample, per layer, then layers": mean(order_pytest_fa(per_batch)),
        "(ii) batch means, per layer, then layers": mean(order_batch_mean(per_batch)),
        "(iii) flattened per layer, then layers": mean(order_flattened(per_batch)),
        "(iii) global flattened over layers": order_global(per_batch),
    }


def paired_t(per_batch, order) -> float:
    """t statistic of (order − (i)) over the eval batches: is the difference beyond batch noise?"""
    diffs = torch.tensor([order([b]) - sum(order_pytest_fa([b])) / len(b[0]) for b in per_batch], dtype=torch.float64)
    se = float(diffs.std()) / math.sqrt(len(diffs))
    return float(diffs.mean()) / se if se > 0 else 0.0


def spread(values: list[float]) -> float:
    """max |Γ| / min |Γ|, infinite when the values disagree in sign."""
    if min(values) < 0 < max(values):
        return math.inf
    sizes = [abs(v) for v in values]
    return max(sizes) / min(sizes) if min(sizes) > 0 else math.inf


def test_aggregation_order_moves_gamma_on_a_real_dfa_run(degenerate_dfa):
    """Pitfall 5: on the real DFA run the orders disagree ≥ 2x or in sign, far beyond batch noise."""
    credit = DFACredit(degenerate_dfa.feedback)
    for epoch in MEANINGFUL_EPOCHS:
        model = degenerate_dfa.meaningful_model_at(epoch)  # asserts the epoch is above the floor
        per_batch = credit_and_reference(model, degenerate_dfa.batches, credit)
        values = aggregates(per_batch)
        ours = values["(i) per-sample, per layer, then layers"]
        glob = values["(iii) global flattened over layers"]
        # measured: epoch 1 -0.064 vs -0.0074 (8.6x); epoch 2 -0.056 vs +0.0067 (sign flip)
        assert spread([ours, glob]) >= 2, (epoch, values)
        assert abs(ours - glob) > 0.02, (epoch, values)
        t = paired_t(per_batch, order_global)
        assert abs(t) > 4, f"epoch {epoch}: global vs (i) differ by only {t:.1f} standard errors (measured ~20)"
        # (i) is what pytest-fa's report gives
        report = R.report_from_probe(P.run_probe(model, degenerate_dfa.batches, credit=credit),
                                     thresholds=DiagnosticThresholds())
        assert all(row.gamma is not None for row in report.layers)
        assert abs(report.gamma_mean(0) - ours) < 1e-6, (report.gamma_per_layer, order_pytest_fa(per_batch))


def test_batch_mean_order_depends_on_the_batching_pytest_fa_does_not(degenerate_dfa):
    """Pitfall 5: re-batching the same 1024 samples moves order (ii) but leaves pytest-fa's Γ_l unchanged."""
    model = degenerate_dfa.meaningful.model_at(MEANINGFUL_EPOCHS[-1])
    credit = DFACredit(degenerate_dfa.feedback)
    x = torch.cat([b[0] for b in degenerate_dfa.batches])
    y = torch.cat([b[1] for b in degenerate_dfa.batches])
    rebatched = [credit_and_reference(model, list(zip(x.split(n), y.split(n))), credit) for n in (64, 128, 256)]
    ours, theirs = [order_pytest_fa(b) for b in rebatched], [order_batch_mean(b) for b in rebatched]
    for layer in range(len(ours[0])):
        values = [o[layer] for o in ours]
        assert max(values) - min(values) < 1e-6, (layer, values)
    # measured: layer 0 of (ii) is 0.069, 0.025, 0.121 for batches of 64, 128, 256
    moved = max(max(t[l] for t in theirs) - min(t[l] for t in theirs) for l in range(len(theirs[0])))
    assert moved > 0.03, theirs


@given(data=st.data())
@settings(max_examples=15, deadline=None)
def test_gamma_does_not_depend_on_how_samples_are_batched(degenerate_dfa, data):
    """Pitfall 5: any partition of the same samples into batches gives the same per-sample Γ_l."""
    model = degenerate_dfa.meaningful.model_at(MEANINGFUL_EPOCHS[0])
    credit = DFACredit(degenerate_dfa.feedback)
    x, y = degenerate_dfa.batches[0]
    total = data.draw(st.integers(min_value=2, max_value=len(y)), label="samples")
    sizes = data.draw(fst.batch_partitions(total), label="partition")
    x, y = x[:total], y[:total]
    # reference: one batch, per-sample cosine written out in float64 (independent of pytest-fa)
    ((a_all, g_all),) = credit_and_reference(model, [(x, y)], credit)
    exact = [float(((a.double() * g.double()).sum(1) / (a.double().norm(dim=1) * g.double().norm(dim=1))).mean())
             for a, g in zip(a_all, g_all)]
    per_batch = credit_and_reference(model, list(zip(x.split(sizes), y.split(sizes))), credit)
    got = order_pytest_fa(per_batch)
    for layer, (value, want) in enumerate(zip(got, exact)):
        assert abs(value - want) < 1e-5, (layer, sizes, value, want)


def test_user_checkpoint_gamma_does_not_hinge_on_aggregation_order(fa_checkpoint, fa_eval_batches, fa_runner):
    """Pitfall 5: does your checkpoint's aggregate Γ change ≥ 2x or sign with the aggregation order?"""
    model = copy.deepcopy(fa_checkpoint.model).eval()
    credit, reason = fa_runner.credit_for(fa_checkpoint.loaded, model)
    if credit is None:
        pytest.skip(f"no credit signal to align: {reason}")
    per_batch = credit_and_reference(model, fa_eval_batches, credit)
    values = aggregates(per_batch)
    ours = values["(i) per-sample, per layer, then layers"]
    orders = {
        "(ii) batch means, per layer, then layers": lambda b: sum(order_batch_mean(b)) / len(b[0][0]),
        "(iii) flattened per layer, then layers": lambda b: sum(order_flattened(b)) / len(b[0][0]),
        "(iii) global flattened over layers": order_global,
    }
    findings = []
    for name, order in orders.items():
        other = values[name]
        t = paired_t(per_batch, order)
        # ≥ 2x or a sign flip, by more than the paper's null spread (0.02), beyond batch noise
        if spread([ours, other]) >= 2 and abs(ours - other) > 0.02 and abs(t) > 4:
            findings.append(f"{name} = {other:+.4f} ({t:+.1f} SE from (i))")
    if findings:
        exposed("5", f"{fa_checkpoint.path}: (i) per-sample, per layer, then layers = {ours:+.4f}, but "
                + "; ".join(findings) + f" over {len(per_batch)} eval batches of {len(per_batch[0][0][0])}")
