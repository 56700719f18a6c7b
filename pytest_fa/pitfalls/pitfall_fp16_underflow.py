"""Pitfall 3: float16 underflows the hidden-layer BP gradients of a Mode-1 network (every deep
element is below its smallest subnormal 2**-24); bfloat16 keeps them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe as P
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.interface import forward_hidden
from pytest_fa.core.reference import reference_pass
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed

pytestmark = pytest.mark.fa_pitfall("3")

FP16_TINY = 2.0**-24  # float16's smallest subnormal; anything below half of it rounds to 0


def _naive_run_probe(model, eval_batches, credit=None, device=None):
    """Measure the model in the dtype it is stored in (float16 stays float16)."""
    was_training = model.training
    model.eval()
    try:
        return P.probe_batches(model, eval_batches, credit, len(eval_batches[0][0]))
    finally:
        model.train(was_training)


GUARD = Guard("pytest_fa.core.probe.run_probe", _naive_run_probe,
              "half-precision models measured in their own dtype instead of a float32 copy",
              Witness(paths=("python",), dtype="float16",
                      why_not="bundles load in float32: a float16 model reaches only the Python API"))


def reference_grads(model, x, y):
    """The float32 BP reference ``g_l = dCE/dh_l`` for one batch."""
    return [g.detach() for g in reference_pass(model, x, y).grads]


def autocast_grads(model, x, y, device_type: str, dtype: torch.dtype):
    """Hidden gradients the way a mixed-precision pipeline gets them: autocast forward, grad to h_l."""
    with torch.autocast(device_type, dtype=dtype):
        logits, hiddens = forward_hidden(model, x)
        loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(loss, hiddens)
    return bool(torch.isfinite(logits).all()), [g.detach() for g in grads]


def kept_norm(low: torch.Tensor, exact: torch.Tensor) -> float:
    """Median over samples of ‖low_i‖ / ‖exact_i‖; a non-finite gradient keeps nothing."""
    low = torch.nan_to_num(low.double(), nan=0.0, posinf=0.0, neginf=0.0)
    return float((D.per_sample_norms(low) / D.per_sample_norms(exact)).median())


def zero_fraction(low: torch.Tensor, exact: torch.Tensor) -> float:
    """Fraction of the nonzero float32 elements that are zero (or not finite) in ``low``."""
    nonzero = exact != 0
    lost = (low == 0) | ~torch.isfinite(low)
    return float((lost & nonzero).sum() / nonzero.sum())


def test_fp16_flushes_the_real_hidden_gradients_bf16_keeps_them(degenerate_dfa):
    """Pitfall 3: a float16 copy of the real Mode-1 reference is all zeros; a bfloat16 copy is intact."""
    model = copy.deepcopy(degenerate_dfa.model).eval()
    x, y = degenerate_dfa.batches[0]
    grads = reference_grads(model, x, y)
    logits, hiddens = forward_hidden(model, x)
    credit = DFACredit(degenerate_dfa.feedback)(x, y, logits, hiddens)
    for layer in range(1, len(grads)):
        g = grads[layer]
        # measured: 100% of the elements below 2**-24 at h_1..h_4
        assert float((g.abs() < FP16_TINY).double().mean()) > 0.9
        half, brain = g.half(), g.bfloat16()  # noqa: FA003
        assert zero_fraction(half, g) > 0.9 and kept_norm(half, g) < 0.1  # measured 1.000 and 0.000
        assert zero_fraction(brain, g) < 0.01  # measured 0.000
        assert 0.98 < kept_norm(brain, g) < 1.02  # measured 1.0000
        # what the fp16 pipeline then reports for most samples: ‖g‖ = 0 and a cosine of 0
        # ("no alignment") ...
        zeroed = D.per_sample_norms(half) == 0
        assert float(zeroed.double().mean()) > 0.5, f"h_{layer}: {int(zeroed.sum())} of {len(zeroed)} samples flushed"
        naive = F.cosine_similarity(credit[layer].half().float(), half.float(), dim=1)  # noqa: FA002,FA003
        assert float(naive[zeroed].abs().max()) == 0.0
        # ... where pytest-fa's cosine of a zero vector is undefined, never a number
        assert torch.isnan(D.cosine_per_sample(credit[layer], half)[zeroed]).all()
        assert not torch.isnan(D.cosine_per_sample(credit[layer], brain)).any()


def test_fp16_is_harmless_while_the_reference_is_healthy(healthy_bp):
    """Pitfall 3: healthy BP's reference (‖g_l‖ ≈ 3e-3) survives float16: the pitfall is specific to Mode 1."""
    model = copy.deepcopy(healthy_bp.model).eval()
    x, y = healthy_bp.batches[0]
    for g in reference_grads(model, x, y):
        assert kept_norm(g.half(), g) > 0.99  # measured 1.000  # noqa: FA003
        assert zero_fraction(g.half(), g) < 0.05  # measured 0.2-0.9% of the elements  # noqa: FA003


def _check_autocast(regime, device_type: str, samples: int) -> None:
    """float16 autocast loses the deep hidden gradients of the real run, bfloat16 keeps them."""
    x, y = regime.batches[0]
    x, y = x[:samples].to(device_type), y[:samples].to(device_type)
    final = copy.deepcopy(regime.model).to(device_type).eval()
    exact = reference_grads(final, x, y)
    _, half = autocast_grads(final, x, y, device_type, torch.float16)
    bf_finite, brain = autocast_grads(final, x, y, device_type, torch.bfloat16)
    assert bf_finite
    for layer in range(1, len(exact)):
        # measured on the CPU: not finite at all (the float16 forward overflows at ‖h‖ ≈ 5e7)
        assert kept_norm(half[layer], exact[layer]) < 0.1, f"h_{layer}: float16 autocast kept the gradient"
        assert zero_fraction(half[layer], exact[layer]) > 0.9
        assert zero_fraction(brain[layer], exact[layer]) < 0.01  # measured 0.000
        assert 0.8 < kept_norm(brain[layer], exact[layer]) < 1.25  # measured 1.000
    # the latest snapshot whose float16 forward still fits: the underflow alone (epoch 1 on the CPU)
    fitting = None
    for epoch in sorted(regime.snapshots):
        model = regime.model_at(epoch).to(device_type)
        finite, half = autocast_grads(model, x, y, device_type, torch.float16)
        if finite:
            fitting = (epoch, model, half)
    if fitting is None:  # every snapshot overflows float16 on this device: shown above already
        return
    epoch, model, half = fitting
    exact = reference_grads(model, x, y)
    _, brain = autocast_grads(model, x, y, device_type, torch.bfloat16)
    deep = range(1, len(exact))
    below = sum(float((exact[l].abs() < FP16_TINY / 2).double().mean()) for l in deep) / len(deep)
    flushed = sum(zero_fraction(half[l], exact[l]) for l in deep) / len(deep)
    kept_bf = sum(zero_fraction(brain[l], exact[l]) for l in deep) / len(deep)
    # measured at epoch 1: 20% of the deep elements below 2**-25, 20% flushed by float16, 0.0% by bfloat16
    assert flushed >= 0.5 * below, (epoch, flushed, below)
    assert kept_bf < 0.01 and kept_bf <= flushed, (epoch, kept_bf, flushed)


def test_fp16_autocast_loses_the_hidden_gradients_on_the_cpu(degenerate_dfa):
    """Pitfall 3: CPU autocast on a 64-sample slice: float16 loses the deep gradients, bfloat16 keeps them."""
    _check_autocast(degenerate_dfa, "cpu", 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_autocast_loses_the_hidden_gradients_on_the_gpu(degenerate_dfa):
    """Pitfall 3: CUDA autocast on a full batch: float16 loses the deep gradients, bfloat16 keeps them."""
    _check_autocast(degenerate_dfa, "cuda", len(degenerate_dfa.batches[0][0]))


def test_probe_measures_a_float16_model_through_a_float32_copy(degenerate_dfa):
    """Pitfall 3: run_probe on a float16-stored Mode-1 model records the dtype and gets the float32 numbers."""
    stored = copy.deepcopy(degenerate_dfa.model).half().eval()
    x, _ = degenerate_dfa.batches[0]
    with torch.no_grad():
        logits, _ = forward_hidden(stored, x.half())
    assert not torch.isfinite(logits).all(), "measured in float16 this network does not even run"
    batches = degenerate_dfa.batches[:4]
    probe = P.run_probe(stored, batches)
    assert probe.dtype == "float32 (weights stored in float16)"
    assert next(stored.parameters()).dtype == torch.float16, "the probe must not convert the caller's model"
    as_float = P.run_probe(copy.deepcopy(stored).float(), batches)
    for got, want in zip(probe.grad_norms, as_float.grad_norms):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    g_med = D.layer_medians(probe.grad_norms)
    original = D.layer_medians(P.run_probe(copy.deepcopy(degenerate_dfa.model), batches).grad_norms)
    # measured: identical to 3 digits (1.51e-9 at h_4) — nonzero, and at the floor as it should be
    assert (g_med > 0).all()
    assert ((g_med / original - 1).abs() < 0.5).all(), (g_med.tolist(), original.tolist())
    assert D.grad_floor(float(g_med[-1]), probe.batch_size)


@given(dtype=fst.dtypes(), samples=st.integers(min_value=2, max_value=128))
@settings(max_examples=12, deadline=None)
def test_probe_never_measures_below_float32(degenerate_dfa, dtype, samples):
    """Pitfall 3: whatever dtype the weights are stored in, the probe measures in float32 or float64."""
    x, y = degenerate_dfa.batches[0]
    batch = [(x[:samples], y[:samples])]
    stored = copy.deepcopy(degenerate_dfa.model).to(dtype)
    probe = P.run_probe(stored, batch)
    name = str(dtype).removeprefix("torch.")
    expected = f"float32 (weights stored in {name})" if dtype in (torch.float16, torch.bfloat16) else name
    assert probe.dtype == expected
    reference = P.run_probe(copy.deepcopy(stored).to(torch.float32 if dtype != torch.float64 else dtype), batch)
    for got, want in zip(probe.grad_norms, reference.grad_norms):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
        assert (got > 0).all()


# strategies.py draws `dtype or dtypes()`, which warns when a strategy is passed (harmless)
@pytest.mark.filterwarnings("ignore:bool\\(.*\\) is always True")
@given(fst.per_sample_rows(dtype=st.just(torch.float32)))
@settings(max_examples=50, deadline=None)
def test_bfloat16_keeps_every_float32_scale(rows):
    """Pitfall 3: at any norm 1e-30…1e8 a bfloat16 copy keeps the norm; float16 flushes rows below 2**-25."""
    exact = D.per_sample_norms(rows)
    torch.testing.assert_close(D.per_sample_norms(rows.bfloat16()), exact, rtol=1e-2, atol=0)
    tiny = rows.abs().amax(dim=1) < FP16_TINY / 2
    assert (D.per_sample_norms(rows.half())[tiny] == 0).all()


def test_user_checkpoint_hidden_gradients_survive_float16(fa_checkpoint, fa_eval_batches):
    """Pitfall 3: would a float16 reference lose your checkpoint's hidden gradients (bfloat16 keeping them)?"""
    model = copy.deepcopy(fa_checkpoint.model).float().eval()
    grads = [reference_grads(model, x.float() if x.is_floating_point() else x, y) for x, y in fa_eval_batches]
    findings = []
    for layer in range(len(grads[0])):
        g = torch.cat([b[layer].reshape(len(b[layer]), -1) for b in grads])
        kept_half, kept_brain = kept_norm(g.half(), g), kept_norm(g.bfloat16(), g)  # noqa: FA003
        if kept_half < 0.5 and kept_brain > 0.9:
            findings.append(
                f"h_{layer}: float16 keeps {kept_half:.0%} of the median per-sample ‖g‖ "
                f"({zero_fraction(g.half(), g):.0%} of the elements flush to zero, "  # noqa: FA003
                f"{float((g.abs() < FP16_TINY).double().mean()):.0%} below 2**-24), bfloat16 {kept_brain:.0%}"
            )
    if findings:
        exposed("3", f"{fa_checkpoint.path} at eval batch {len(fa_eval_batches[0][0])}: " + "; ".join(findings))
