"""Unit tests of ``pytest_fa.core.probe``: every number ``run_probe`` returns against a hand
computation in plain torch (``model(x, return_hidden=True)``, batch-mean CE, autograd on
the hidden states, per-sample L2 norms), its mode and dtype handling, and its errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core.credit import BPCredit, DFACredit
from pytest_fa.core.probe import Probe, check_finite_parameters, run_probe
from pytest_fa.errors import DataError, ModelInterfaceError, NonFiniteError
from pytest_fa.models import ResMLP, build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CLASSES = 10
IN = 12
D = 16
DEPTH = 3
TIGHT = {"rtol": 1e-12, "atol": 0.0}


def _resmlp(seed: int = 0, depth: int = DEPTH) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=[IN], num_classes=CLASSES, d=D, depth=depth)


def _batches(k: int = 3, size: int = 16, seed: int = 1, shape=(IN,)):
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, *shape, generator=g), torch.randint(0, CLASSES, (size,), generator=g))
        for _ in range(k)
    ]


def _feedback(dims, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(CLASSES, f, generator=g) for f in dims]


def _cos(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    a, g = a.double(), g.double()
    return (a * g).sum(dim=1) / (a.norm(dim=1) * g.norm(dim=1))


def _by_hand(model, batches, read=lambda t: t.reshape(t.shape[0], -1), feedback=None):
    """Everything the probe measures, computed directly; the model must already be in the
    mode the probe is expected to use (eval)."""
    dtype = next(model.parameters()).dtype
    out = {"h": [], "g": [], "mid": [], "logit": [], "logit_formula": [], "correct": 0, "cos": [], "anorm": [], "rel": []}
    for x, y in batches:
        x = x.to(dtype)
        logits, hiddens = model(x, return_hidden=True)
        loss = F.cross_entropy(logits, y)
        *grads, logit_grad = torch.autograd.grad(loss, [*hiddens, logits])
        rows_h = [read(h.detach()) for h in hiddens]
        rows_g = [read(g) for g in grads]
        out["h"].append([r.double().norm(dim=1) for r in rows_h])
        out["g"].append([r.double().norm(dim=1) for r in rows_g])
        mid = (len(hiddens) - 1) // 2
        out["mid"].append(rows_g[mid].double().mean(dim=0))
        out["logit"].append(logit_grad.double().norm(dim=1))
        z = logits.detach().double()
        exact = torch.softmax(z, dim=-1) - F.one_hot(y, CLASSES).double()
        out["logit_formula"].append(exact.norm(dim=1) / len(y))
        out["rel"].append((logit_grad * len(y)).double().sub(exact).norm(dim=1) / exact.norm(dim=1))
        out["correct"] += int((logits.argmax(dim=1) == y).sum())
        if feedback is not None:
            e = torch.softmax(logits.detach(), dim=-1) - F.one_hot(y, CLASSES).to(logits.dtype)
            credits = [e @ b.to(e) for b in feedback]
            out["cos"].append([_cos(a, g) for a, g in zip(credits, rows_g)])
            out["anorm"].append([a.double().norm(dim=1) for a in credits])

    def cat(per_batch):
        return [torch.cat(col) for col in zip(*per_batch)]

    return {
        "h": cat(out["h"]),
        "g": cat(out["g"]),
        "mid": torch.stack(out["mid"]),
        "mid_layer": mid,
        "logit": torch.cat(out["logit"]),
        "logit_formula": torch.cat(out["logit_formula"]),
        "rel": torch.cat(out["rel"]),
        "correct": out["correct"],
        "cos": cat(out["cos"]) if feedback is not None else None,
        "anorm": cat(out["anorm"]) if feedback is not None else None,
    }


class DropoutResMLP(ResMLP):
    """ResMLP with dropout on h_0: train and eval mode give different numbers."""

    def __init__(self, *args, p: float = 0.5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.drop = nn.Dropout(p)

    def embed_input(self, x):
        return self.drop(self.embed(x.flatten(1)))


def _dropout_model() -> nn.Module:
    torch.manual_seed(0)
    return DropoutResMLP(input_shape=[IN], num_classes=CLASSES, d=D, depth=DEPTH)


class HandNet(nn.Module):
    """Minimal duck-typed residual net; ``fault`` breaks one hidden state on purpose."""

    def __init__(self, fault: str | None = None) -> None:
        super().__init__()
        self.embed = nn.Linear(IN, 8)
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(2))
        self.head = nn.Linear(8, CLASSES)
        self.fault = fault

    def forward(self, x, return_hidden=False):
        h = self.embed(x)
        hiddens = [h]
        for block in self.blocks:
            h = h + block(h)
            hiddens.append(h)
        logits = self.head(h)
        if self.fault == "detached":
            hiddens[1] = hiddens[1].detach()
        elif self.fault == "unused":
            hiddens[1] = hiddens[1] * 1.0  # a copy the logits do not depend on
        return (logits, hiddens) if return_hidden else logits


# ---------------------------------------------------------------- the measured numbers


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_norms_match_a_hand_computation_per_sample_in_batch_order(dtype):
    """‖h_l‖ and ‖g_l‖ (g_l = dCE/dh_l, CE the batch mean) per sample, batches concatenated in order."""
    model = _resmlp().to(dtype).eval()
    batches = _batches(k=3, size=16)
    probe = run_probe(model, batches)
    hand = _by_hand(model, batches)
    assert isinstance(probe, Probe)
    assert probe.num_layers == DEPTH + 1 == len(probe.grad_norms)
    for l in range(DEPTH + 1):
        assert probe.hidden_norms[l].shape == (48,) and probe.hidden_norms[l].dtype == torch.float64
        torch.testing.assert_close(probe.hidden_norms[l], hand["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)
    # the samples differ, so a batch-level norm (or batches out of order) could not pass
    assert float(probe.grad_norms[DEPTH].std()) > 0
    assert probe.batch_size == 16 and probe.num_batches == 3
    assert probe.dtype == str(dtype).removeprefix("torch.")
    assert probe.device == "cpu" and probe.layout == "vector" and probe.mode == "eval"


def test_probe_under_no_grad_gives_the_same_numbers():
    model, batches = _resmlp().eval(), _batches(k=2)
    hand = _by_hand(model, batches)
    with torch.no_grad():
        probe = run_probe(model, batches)
    for l in range(DEPTH + 1):
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)


def test_gradient_norms_carry_the_batch_mean_factor():
    """The same samples measured in one batch of 32 and in two of 16: ‖g‖ scales by 32/16."""
    model = _resmlp().eval()
    (x, y), = _batches(k=1, size=32)
    whole = run_probe(model, [(x, y)])
    halves = run_probe(model, [(x[:16], y[:16]), (x[16:], y[16:])])
    for l in range(DEPTH + 1):
        torch.testing.assert_close(halves.grad_norms[l], 2 * whole.grad_norms[l], rtol=1e-5, atol=0.0)
        torch.testing.assert_close(halves.hidden_norms[l], whole.hidden_norms[l], rtol=1e-5, atol=0.0)


def test_logit_gradient_norms_and_output_error():
    """‖∂CE/∂z_i‖ = ‖softmax(z_i) − onehot(y_i)‖ / B, and the relative error of B·∂CE/∂z in float32."""
    model = _resmlp().eval()
    batches = _batches(k=2, size=32)
    probe = run_probe(model, batches)
    hand = _by_hand(model, batches)
    assert probe.logit_grad_norms.shape == (64,)
    torch.testing.assert_close(probe.logit_grad_norms, hand["logit"], **TIGHT)
    torch.testing.assert_close(probe.logit_grad_norms, hand["logit_formula"], rtol=1e-5, atol=0.0)
    torch.testing.assert_close(probe.error_rel_errors, hand["rel"], rtol=1e-9, atol=1e-15)
    assert float(probe.error_rel_errors.max()) < 1e-5  # float32 on an untrained model: no cancellation


def test_eval_correct_counts_argmax_hits():
    model = _resmlp().eval()
    batches = _batches(k=2, size=16)
    # relabel half of each batch with the model's own prediction, so the count is far from chance
    with torch.no_grad():
        batches = [(x, torch.where(torch.arange(16) < 8, model(x).argmax(dim=1), y)) for x, y in batches]
    probe = run_probe(model, batches)
    hand = _by_hand(model, batches)
    assert probe.eval_correct == hand["correct"]
    assert probe.eval_correct >= 16
    assert probe.eval_accuracy == pytest.approx(hand["correct"] / 32)


@pytest.mark.parametrize("depth, mid", [(3, 1), (4, 2)])
def test_mid_layer_batch_means(depth, mid):
    """``mid_layer`` is (L+1 − 1) // 2 of h_0..h_L; one float64 row per batch: the batch-mean g there."""
    model = _resmlp(depth=depth).eval()
    batches = _batches(k=4, size=16)
    probe = run_probe(model, batches)
    hand = _by_hand(model, batches)
    assert probe.mid_layer == hand["mid_layer"] == mid
    assert probe.mid_batch_means.shape == (4, D) and probe.mid_batch_means.dtype == torch.float64
    torch.testing.assert_close(probe.mid_batch_means, hand["mid"], rtol=1e-12, atol=1e-18)


# ---------------------------------------------------------------- credit signals


def test_dfa_cosines_match_a_hand_computation():
    model = _resmlp().eval()
    batches = _batches(k=2, size=16)
    feedback = _feedback([D] * (DEPTH + 1))
    probe = run_probe(model, batches, credit=DFACredit(feedback))
    hand = _by_hand(model, batches, feedback=feedback)
    assert len(probe.cosines) == DEPTH + 1
    for l in range(DEPTH + 1):
        assert probe.cosines[l].shape == (32,)
        torch.testing.assert_close(probe.cosines[l], hand["cos"][l], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(probe.credit_norms[l], hand["anorm"][l], rtol=1e-12, atol=0.0)
    # random B: cosines spread around 0, not a constant
    assert float(torch.cat(probe.cosines).std()) > 0.05


def test_no_credit_gives_no_cosines():
    probe = run_probe(_resmlp().eval(), _batches(k=2))
    assert probe.cosines is None and probe.credit_norms is None


def test_credit_may_skip_layers_with_none():
    model = _resmlp().eval()
    batches = _batches(k=2)
    feedback = _feedback([D] * (DEPTH + 1))
    dfa = DFACredit(feedback)

    def partial(x, y, logits, hiddens):
        return [None if l % 2 == 0 else a for l, a in enumerate(dfa(x, y, logits, hiddens))]

    probe = run_probe(model, batches, credit=partial)
    hand = _by_hand(model, batches, feedback=feedback)
    assert probe.cosines[0] is None and probe.cosines[2] is None
    assert probe.credit_norms[0] is None and probe.credit_norms[2] is None
    torch.testing.assert_close(probe.cosines[1], hand["cos"][1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(probe.cosines[3], hand["cos"][3], rtol=1e-10, atol=1e-12)


class NoisyResMLP(ResMLP):
    """ResMLP with fresh noise on h_0 in every forward pass, in either mode."""

    def embed_input(self, x):
        h = self.embed(x.flatten(1))
        return h + torch.randn_like(h)


def test_credit_sees_the_same_forward_pass_as_the_reference():
    """BP's own credit, taken on the probe's forward pass, has cosine 1 with the reference
    even when every forward pass draws fresh noise: a second pass for the credit could not."""
    torch.manual_seed(0)
    model = NoisyResMLP(input_shape=[IN], num_classes=CLASSES, d=D, depth=DEPTH)
    probe = run_probe(model, _batches(k=2), credit=BPCredit(lambda t: t))
    for cos in probe.cosines:
        torch.testing.assert_close(cos, torch.ones_like(cos), rtol=0.0, atol=1e-12)

    def second_pass(x, y, logits, hiddens):  # what a probe that re-ran the model would see
        return BPCredit(lambda t: t)(x, y, *model(x, return_hidden=True))

    separate = run_probe(model, _batches(k=2), credit=second_pass)
    assert float(torch.cat(separate.cosines).min()) < 0.99


# ---------------------------------------------------------------- mode and dtype


@pytest.mark.parametrize("train_before", [True, False])
def test_eval_mode_is_used_and_the_callers_mode_restored(train_before):
    model = _dropout_model().train(train_before)
    batches = _batches(k=2)
    torch.manual_seed(123)
    probe = run_probe(model, batches)
    assert model.training is train_before
    assert all(m.training is train_before for m in model.modules())
    hand = _by_hand(copy.deepcopy(model).eval(), batches)
    for l in range(DEPTH + 1):
        torch.testing.assert_close(probe.hidden_norms[l], hand["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)
    # the check can fail: in train mode dropout changes the numbers
    torch.manual_seed(123)
    train_hand = _by_hand(copy.deepcopy(model).train(), batches)
    assert not torch.allclose(train_hand["h"][0], hand["h"][0])


def test_a_mixed_mode_is_restored_module_by_module():
    model = _dropout_model().train()
    model.blocks[0].eval()
    run_probe(model, _batches(k=1))
    assert model.training and not model.blocks[0].training


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_measured_through_a_float32_copy(half):
    model = _resmlp().to(half).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(k=2)
    probe = run_probe(model, batches)
    name = str(half).removeprefix("torch.")
    assert probe.dtype == f"float32 (weights stored in {name})"
    # the caller's model is untouched: dtype, weights and mode
    assert all(p.dtype == half for p in model.parameters())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model.training
    hand = _by_hand(copy.deepcopy(model).float().eval(), batches)
    for l in range(DEPTH + 1):
        torch.testing.assert_close(probe.hidden_norms[l], hand["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)
        assert bool((probe.grad_norms[l] > 0).all())


# ---------------------------------------------------------------- token and spatial states


def _vit(layout: str | None = None) -> nn.Module:
    torch.manual_seed(0)
    model = build_model("vit-mini", input_shape=[IN], num_classes=CLASSES, d=D, depth=2, heads=2, patch=4)
    if layout is not None:
        model.hidden_layout = layout
    return model.eval()


@pytest.mark.parametrize(
    "layout, read",
    [("tokens", lambda t: t[:, 0, :]), ("tokens_mean", lambda t: t.mean(dim=1))],
    ids=["cls", "mean"],
)
def test_token_states_are_read_per_layout(layout, read):
    """(B, T, d) states: at the cls token under ``tokens``, as the token mean under ``tokens_mean``."""
    model = _vit(layout)
    batches = _batches(k=2)
    feedback = _feedback([D] * 3)
    probe = run_probe(model, batches, credit=DFACredit(feedback))
    hand = _by_hand(model, batches, read=read, feedback=feedback)
    other = _by_hand(model, batches, read=lambda t: t.reshape(t.shape[0], -1))
    assert probe.layout == layout
    for l in range(3):
        torch.testing.assert_close(probe.hidden_norms[l], hand["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)
        torch.testing.assert_close(probe.cosines[l], hand["cos"][l], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(probe.hidden_norms[l], other["h"][l])  # not all tokens flattened
    torch.testing.assert_close(probe.mid_batch_means, hand["mid"], rtol=1e-12, atol=1e-18)


def test_spatial_states_are_flattened():
    torch.manual_seed(0)
    model = build_model("smallcnn", input_shape=[IN], num_classes=CLASSES, channels=4, depth=2, fc=8).eval()
    batches = _batches(k=2)
    probe = run_probe(model, batches)
    hand = _by_hand(model, batches, read=lambda t: t.reshape(t.shape[0], -1))
    assert probe.layout == "spatial"
    assert probe.mid_batch_means.shape == (2, 4 * IN)
    for l in range(3):
        torch.testing.assert_close(probe.hidden_norms[l], hand["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], hand["g"][l], **TIGHT)


# ---------------------------------------------------------------- errors


def test_no_batches_is_a_data_error():
    with pytest.raises(DataError, match="no eval batches"):
        run_probe(_resmlp(), [])


def test_batches_of_different_sizes_are_a_data_error():
    batches = _batches(k=1, size=16) + _batches(k=1, size=32, seed=2)
    with pytest.raises(DataError, match=r"1/B") as info:
        run_probe(_resmlp(), batches)
    assert "[16, 32]" in str(info.value)


def test_nan_weight_is_named():
    model = _resmlp()
    with torch.no_grad():
        model.blocks[1].w1.weight[2, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"`blocks\.1\.w1\.weight`"):
        run_probe(model, _batches(k=1))
    with pytest.raises(NonFiniteError, match=r"`blocks\.1\.w1\.weight`"):
        check_finite_parameters(model)


def test_check_finite_parameters_reads_float_buffers_and_skips_integer_ones():
    model = _resmlp()
    model.register_buffer("count", torch.tensor(7))  # integer: never NaN, never checked
    model.register_buffer("scale", torch.ones(3))
    assert check_finite_parameters(model) is None
    model.scale[1] = float("inf")
    with pytest.raises(NonFiniteError, match="`scale`"):
        check_finite_parameters(model)


def test_nan_logits_are_a_non_finite_error():
    (x, y), = _batches(k=1)
    x = x.clone()
    x[3, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="logits"):
        run_probe(_resmlp(), [(x, y)])


@pytest.mark.parametrize(
    "fault, match",
    [("detached", r"h_1 is detached"), ("unused", r"h_1 is not on the path")],
)
def test_hidden_states_off_the_graph_are_interface_errors(fault, match):
    torch.manual_seed(0)
    model = HandNet()
    assert run_probe(model, _batches(k=1)).num_layers == 3  # the healthy net passes
    model.fault = fault
    with pytest.raises(ModelInterfaceError, match=match):
        run_probe(model, _batches(k=1))


def test_credit_with_the_wrong_number_of_layers():
    dfa = DFACredit(_feedback([D] * (DEPTH + 1)))
    with pytest.raises(ModelInterfaceError, match=r"returned 3 layers for 4 hidden states"):
        run_probe(_resmlp(), _batches(k=1), credit=lambda *a: dfa(*a)[:3])


@pytest.mark.parametrize(("credit", "phrase"), [
    (lambda *a: 1 / 0, "the credit signal raised ZeroDivisionError: division by zero; a credit signal is called as"),
    (lambda *a: None, "the credit signal returned NoneType, not a list; a credit signal is called as"),
    (lambda x, y, logits, hiddens: [h.tolist() for h in hiddens], "credit a_0 is list, not a tensor;"),
])
def test_a_credit_signal_that_raises_or_returns_no_tensors_is_an_interface_error(credit, phrase):
    """The signal's own exception, or an AttributeError on ``a.shape``, escaped from the probe."""
    with pytest.raises(ModelInterfaceError) as info:
        run_probe(_resmlp(), _batches(k=1), credit=credit)
    assert phrase in str(info.value)
    assert "credit(x, y, logits, hiddens) and returns [a_0, ..., a_L]" in str(info.value)


@pytest.mark.parametrize("bad", ["wide", "transposed", "flat"])
def test_credit_with_the_wrong_shape(bad):
    feedback = _feedback([D] * (DEPTH + 1))
    dfa = DFACredit(feedback)

    def credit(x, y, logits, hiddens):
        out = list(dfa(x, y, logits, hiddens))
        a = out[2]
        out[2] = {"wide": torch.cat([a, a[:, :1]], dim=1), "transposed": a.T, "flat": a.reshape(-1)}[bad]
        return out

    with pytest.raises(ModelInterfaceError, match=r"credit a_2 has shape"):
        run_probe(_resmlp(), _batches(k=1, size=32), credit=credit)  # B ≠ d: a.T is not square


def test_credit_with_nan_is_a_non_finite_error():
    dfa = DFACredit(_feedback([D] * (DEPTH + 1)))

    def credit(x, y, logits, hiddens):
        out = list(dfa(x, y, logits, hiddens))
        out[1] = out[1].clone()
        out[1][0, 0] = float("nan")
        return out

    with pytest.raises(NonFiniteError, match=r"a_1 contains NaN"):
        run_probe(_resmlp(), _batches(k=1), credit=credit)


def test_token_states_are_read_over_all_tokens_by_default():
    """vit-mini's default, ``tokens_all``: ‖h_l‖ and ‖g_l‖ over the sample's T·d values, Γ at the cls token."""
    model = _vit()
    batches = _batches(k=2)
    feedback = _feedback([D] * 3)
    probe = run_probe(model, batches, credit=DFACredit(feedback))
    flat = _by_hand(model, batches, feedback=None)
    cls = _by_hand(model, batches, read=lambda t: t[:, 0, :], feedback=feedback)
    assert probe.layout == "tokens_all"
    for l in range(3):
        torch.testing.assert_close(probe.hidden_norms[l], flat["h"][l], **TIGHT)
        torch.testing.assert_close(probe.grad_norms[l], flat["g"][l], **TIGHT)
        torch.testing.assert_close(probe.cosines[l], cls["cos"][l], rtol=1e-10, atol=1e-12)
        assert not torch.allclose(probe.hidden_norms[l], cls["h"][l])  # not the cls token's norm
