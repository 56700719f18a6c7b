"""Pitfall B6: hidden states (or gradients) normalised before their norms are logged, so the
residual-stream explosion of a degenerate run disappears from the logs."""

from __future__ import annotations

import itertools
import operator

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe, report
from pytest_fa.core.interface import forward_hidden
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.pitfalls import Guard

pytestmark = pytest.mark.fa_pitfall("B6")


def layer_normed(h: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(h, h.shape[-1:])


def unit_normed(h: torch.Tensor) -> torch.Tensor:
    return h / h.norm(dim=-1, keepdim=True)


def naive_logged_norms(model, x, normalise=layer_normed) -> list[torch.Tensor]:
    """Per-sample ‖h_l‖ as a logger hooked after a normalisation records them."""
    with torch.no_grad():
        _, hiddens = forward_hidden(model, x)
    return [D.per_sample_norms(normalise(h).flatten(1)) for h in hiddens]


def _naive_run_probe(model, eval_batches, credit=None, device=None):
    """The probe of a pipeline that logs ‖h_l‖ of LayerNorm-ed hidden states."""
    batches = list(eval_batches)
    was_training = model.training
    model.eval()
    try:
        measured = probe.probe_batches(model, batches, credit, len(batches[0][0]))
        logged = [naive_logged_norms(model, x.to(device)) for x, _ in batches]
    finally:
        model.train(was_training)
    measured.hidden_norms = [torch.cat(layer) for layer in zip(*logged)]
    return measured


GUARD = Guard("pytest_fa.core.probe.run_probe", _naive_run_probe,
              "‖h_l‖ read from LayerNorm-ed copies of the hidden states")


def _growth(norms: list[torch.Tensor]) -> float:
    return D.residual_growth(D.layer_medians(norms))[0]


def test_normalised_logs_make_a_real_explosion_look_like_a_healthy_network(degenerate_dfa, healthy_bp):
    """Pitfall B6: logged after LayerNorm (or unit normalisation, or the terminal norm) the
    Mode-1 DFA's ‖h_l‖ grow 1.00× per block — the same as healthy BP — instead of ~8e4×."""
    x_dfa, _ = degenerate_dfa.batches[0]
    x_bp, _ = healthy_bp.batches[0]
    with torch.no_grad():
        _, raw = forward_hidden(degenerate_dfa.model, x_dfa)
    raw_growth = _growth([D.per_sample_norms(h) for h in raw])
    # measured (seed 42, one thread): raw max growth 7.9e4× (DFA) and 1.21× (BP); every
    # normalised reading ≤ 1.0003×, the trained terminal norm's up to 1.08× over the sweep
    assert raw_growth > 1000, "the run did not reach Mode 1"
    for normalise in (layer_normed, unit_normed):
        logged_dfa = _growth(naive_logged_norms(degenerate_dfa.model, x_dfa, normalise))
        assert logged_dfa < 1.01, (normalise, logged_dfa)
    through_out_ln = _growth(naive_logged_norms(degenerate_dfa.model, x_dfa, degenerate_dfa.model.out_ln))
    assert through_out_ln < 1.5 < 1000 < raw_growth, through_out_ln  # a healthy-looking log
    logged_bp = _growth(naive_logged_norms(healthy_bp.model, x_bp))
    logged_dfa = _growth(naive_logged_norms(degenerate_dfa.model, x_dfa))
    assert abs(logged_dfa - logged_bp) < 0.01, "the logs cannot tell the two runs apart"

    # unit-normalised gradients hide the floor of (b) the same way
    x, y = degenerate_dfa.batches[0]
    g_L = reference_pass(degenerate_dfa.model, x, y).grads[-1]
    assert float(D.per_sample_norms(g_L).median()) < DiagnosticThresholds().grad_floor
    assert float(D.per_sample_norms(unit_normed(g_L)).median()) == pytest.approx(1.0)


def test_pytest_fa_reads_the_raw_stream_and_fires_a(degenerate_dfa, healthy_bp):
    """Pitfall B6: pytest-fa's probe reads the raw h_l the model returns, so (a) fires on
    the Mode-1 DFA run (and (b) too) and stays quiet on healthy BP."""
    limits = DiagnosticThresholds()
    measured = probe.run_probe(degenerate_dfa.model, degenerate_dfa.batches)
    diagnosed = report.report_from_probe(measured, thresholds=limits)
    assert diagnosed.diagnostics["a"].fires and diagnosed.diagnostics["a"].value > 1000
    assert diagnosed.diagnostics["b"].fires
    x, _ = degenerate_dfa.batches[0]
    with torch.no_grad():
        _, raw = forward_hidden(degenerate_dfa.model, x)
    for ours, h in zip(measured.hidden_norms, raw):
        torch.testing.assert_close(ours[: len(x)], D.per_sample_norms(h), rtol=1e-9, atol=0)

    healthy = report.report_from_probe(probe.run_probe(healthy_bp.model, healthy_bp.batches), thresholds=limits)
    assert not healthy.diagnostics["a"].fires and healthy.diagnostics["a"].value < 5


class ScaledStack(nn.Module):
    """A float64 stream with known growth: ``h_{l+1} = c_l · h_l`` exactly, a terminal
    LayerNorm and a head — the interface pytest-fa reads, with the answer built in."""

    def __init__(self, scales: list[float], d: int, classes: int, generator: torch.Generator) -> None:
        super().__init__()
        self.scales = list(scales)
        self.embed = nn.Linear(d, d, dtype=torch.float64)
        self.blocks = nn.ModuleList(nn.Identity() for _ in scales)
        self.out_ln = nn.LayerNorm(d, dtype=torch.float64)
        self.out_head = nn.Linear(d, classes, dtype=torch.float64)
        with torch.no_grad():
            for p in (self.embed.weight, self.out_head.weight):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) / d**0.5)

    def forward(self, x, return_hidden: bool = False):
        hiddens = list(itertools.accumulate(self.scales, operator.mul, initial=self.embed(x)))
        logits = self.out_head(self.out_ln(hiddens[-1]))
        return (logits, hiddens) if return_hidden else logits


@given(scales=st.lists(fst.norm_scales(torch.float64), min_size=1, max_size=6), batch_size=st.integers(1, 16),
       seed=fst.seeds())
@settings(max_examples=50, deadline=None)
def test_the_probe_reads_exactly_the_growth_the_stream_has(scales, batch_size, seed):
    """Pitfall B6: for block scales anywhere in 1e-30…1e8, the per-block growth pytest-fa
    reports is the true factor ‖h_{l+1}‖/‖h_l‖ = c_l; a unit-normalised reading is 1 always."""
    generator = torch.Generator().manual_seed(seed)
    model = ScaledStack(scales, d=8, classes=3, generator=generator)
    x = torch.randn(batch_size, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (batch_size,), generator=generator)
    measured = probe.run_probe(model, [(x, y)])
    growth = D.block_growth(D.layer_medians(measured.hidden_norms))
    torch.testing.assert_close(growth, torch.tensor(scales, dtype=torch.float64), rtol=1e-9, atol=0)
    if min(itertools.accumulate(scales, operator.mul)) > 1e-140:
        # (below, h_l's squares leave float64's normal range and the naive h / ‖h‖ is not even 1)
        logged = D.block_growth(D.layer_medians(naive_logged_norms(model, x, unit_normed)))
        torch.testing.assert_close(logged, torch.ones_like(logged), rtol=1e-9, atol=0)
