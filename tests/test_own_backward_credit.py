"""Credit from the method's own backward: what autograd delivers at each state through the
model as it is. Equal to the project's DFA and FA rules on models that run them in their
backward, and to biotorch's credit (FA, DFA, uSF, sign symmetry) derived by hand."""

from __future__ import annotations

from types import SimpleNamespace

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pytest_fa
from pytest_fa.core.backprop import bp_twin
from pytest_fa.core.credit import (
    BPCredit,
    DFACredit,
    FACredit,
    OwnBackwardCredit,
    init_dfa_feedback,
    init_fa_feedback,
    output_error,
)
from pytest_fa.core.reference import reference_pass
from pytest_fa.core.settings import ProtocolSettings
from pytest_fa.errors import ModelInterfaceError
from test_backprop_reference import BATCH, CLASSES, DEPTH, IN, D, Block, adapted, biotorch_model, data

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook"),
]


# -- the project's DFA and FA, run by a model's backward ----------------------------------------
class _Top(torch.autograd.Function):
    """At the logits: keeps the gradient there, ``dCE/dz``, for the feedback below."""

    @staticmethod
    def forward(ctx, logits, store):
        ctx.store = store
        return logits.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.store["error"] = grad
        return grad, None


class _Broadcast(torch.autograd.Function):
    """At ``h_l``: sends ``dCE/dz B_l`` below, whatever comes from above (DFA's rule)."""

    @staticmethod
    def forward(ctx, h, feedback, store):
        ctx.feedback, ctx.store = feedback, store
        return h.clone()

    @staticmethod
    def backward(ctx, grad):
        return ctx.store["error"] @ ctx.feedback, None, None


class _Chained(torch.autograd.Function):
    """``h_{l+1} = h_l + branch``; sends ``g_{l+1} B_l`` to ``h_l`` (FA's rule: the fixed
    matrix in place of the transposed Jacobian)."""

    @staticmethod
    def forward(ctx, h, branch, feedback):
        ctx.feedback = feedback
        return h + branch

    @staticmethod
    def backward(ctx, grad):
        return grad @ ctx.feedback, grad, None


class FeedbackNet(nn.Module):
    """The project's interface (``return_hidden``); ``rule`` runs DFA or FA in its backward
    with the project's feedback matrices, ``"bp"`` is its twin that backpropagates."""

    def __init__(self, rule: str, feedback, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.rule, self.feedback = rule, feedback
        self.embed = nn.Linear(IN, D)
        self.blocks = nn.ModuleList(Block(D) for _ in range(DEPTH))
        self.norm, self.head = nn.LayerNorm(D), nn.Linear(D, CLASSES)

    def forward(self, x, return_hidden=False):
        store: dict = {}
        h = self.embed(x)
        states = [h]
        for index, block in enumerate(self.blocks):
            if self.rule == "dfa":
                h = _Broadcast.apply(h, self.feedback[index], store)
            if self.rule == "fa":
                h = _Chained.apply(h, block.fc2(block.act(block.fc1(h.detach()))), self.feedback[index])
            else:
                h = block(h)
            states.append(h)
        if self.rule != "bp":
            h = _Broadcast.apply(h, self.feedback[-1], store)
        logits = self.head(self.norm(h))
        logits = _Top.apply(logits, store) if self.rule != "bp" else logits
        return (logits, states) if return_hidden else logits


def _twin(model: FeedbackNet) -> FeedbackNet:
    twin = copy.deepcopy(model)
    twin.rule = "bp"
    return twin


@pytest.mark.parametrize("rule, init, credit", [
    ("dfa", init_dfa_feedback, DFACredit), ("fa", init_fa_feedback, FACredit),
])
def test_own_backward_equals_the_projects_rule_run_in_the_backward(rule, init, credit):
    feedback = init(CLASSES, [D] * (DEPTH + 1), torch.Generator().manual_seed(5))
    model = FeedbackNet(rule, feedback)
    x, y = data()
    x, y = x[:BATCH], y[:BATCH]
    ref = reference_pass(model, x, y, OwnBackwardCredit(model), reference_model=_twin(model))
    expected = credit(feedback)(x, y, ref.logits, ref.hiddens)
    for own, rule_credit in zip(ref.credits, expected):  # dCE/dz = e / B under the batch-mean CE
        torch.testing.assert_close(own * BATCH, rule_credit, rtol=1e-5, atol=1e-7)
    ours = pytest_fa.check(model, data(), batch_size=BATCH, frozen_acc=0.1, credit=OwnBackwardCredit(model),
                           reference_model=_twin(model))
    theirs = pytest_fa.check(_twin(model), data(), batch_size=BATCH, frozen_acc=0.1, credit=credit(feedback))
    assert ours.gamma_per_layer == pytest.approx(theirs.gamma_per_layer, rel=1e-5, abs=1e-6)


def test_on_a_model_that_backpropagates_it_is_the_gradient():
    model = FeedbackNet("bp", [])
    x, y = data()
    x, y = x[:BATCH], y[:BATCH]
    ref = reference_pass(model, x, y, OwnBackwardCredit(model))
    expected = BPCredit(lambda g: g)(x, y, ref.logits, ref.hiddens)
    for own, gradient in zip(ref.credits, expected):
        torch.testing.assert_close(own, gradient)


def test_a_state_the_backward_does_not_reach_gets_no_credit():
    model = FeedbackNet("bp", [])
    x, y = data()
    logits, states = model(x[:BATCH], return_hidden=True)
    states[1] = states[1].detach()
    credits = OwnBackwardCredit(model)(x, y[:BATCH], logits, states)
    assert credits[1] is None and all(a is not None for i, a in enumerate(credits) if i != 1)


# -- biotorch, derived by hand -----------------------------------------------------------------
def _feedback(layer, mode):
    """The matrix a biotorch layer's backward used in the last forward pass."""
    if mode == "frsf":  # a fixed |B| with the signs of the forward weight, formed in each pass
        return layer.weight_backward.abs() * torch.sign(layer.weight)
    return layer.weight_backward  # fa, dfa; usf and brsf store the one their pass formed


def _by_hand(bio, mode, hiddens, error):
    """biotorch's credit at h_0..h_L from its layers' weights: ``error`` is ``dCE/dz``.

    FA and the sign-symmetric modes: each converted layer sends ``grad @ B`` to its input.
    DFA: each sends ``error @ B`` to its input, whatever comes from above."""
    net = bio.module
    h_last = hiddens[-1].detach().requires_grad_()
    (top,) = torch.autograd.grad(net.norm(h_last), h_last, error @ _feedback(net.head, mode))
    credits = [top]
    for block, h in zip(reversed(net.blocks), reversed(hiddens[:-1])):
        above = credits[-1]
        if mode == "dfa":
            through = error @ _feedback(block.fc1, mode)
        else:
            active = (F.linear(h.detach(), block.fc1.weight, block.fc1.bias) > 0).to(h.dtype)
            through = ((above @ _feedback(block.fc2, mode)) * active) @ _feedback(block.fc1, mode)
        credits.append(above + through)
    return credits[::-1]


@pytest.mark.parametrize("mode", ["fa", "dfa", "usf", "brsf", "frsf"])
def test_on_biotorch_it_equals_the_credit_derived_by_hand(mode):
    model = adapted(biotorch_model(mode))
    bio = model.model
    x, y = data()
    if mode == "dfa":  # a training step leaves the loss gradient of its batch in every layer
        bio.train()
        bio(x[BATCH:], targets=y[BATCH:], loss_function=nn.CrossEntropyLoss())
        stale = bio.module.head.loss_gradient
    bio.eval()
    x, y = x[:BATCH], y[:BATCH]
    ref = reference_pass(model, x, y, OwnBackwardCredit(model), reference_model=bp_twin(model))
    error = torch.autograd.grad(F.cross_entropy(ref.logits, y), ref.logits, retain_graph=True)[0]
    for own, hand in zip(ref.credits, _by_hand(bio, mode, ref.hiddens, error)):
        torch.testing.assert_close(own, hand, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(error * BATCH, output_error(ref.logits, y))
    if mode == "dfa":  # this batch's error, not the stale one; the stale one is put back
        assert bio.module.head.loss_gradient is stale


def test_a_credit_built_on_another_copy_of_a_biotorch_dfa_model_is_refused():
    model = adapted(biotorch_model("dfa")).eval()
    credit = OwnBackwardCredit(copy.deepcopy(model))
    x, y = data()
    with pytest.raises(ModelInterfaceError, match="built on another HookedModel than the one measured"):
        reference_pass(model, x[:BATCH], y[:BATCH], credit, reference_model=bp_twin(model))


def test_the_credit_setting_own_backward_reads_the_models_own_backward():
    from pytest_fa.protocol import ProtocolRunner

    model = FeedbackNet("bp", [])
    credit, reason = ProtocolRunner(ProtocolSettings(credit="own-backward", device="cpu")).credit_for(SimpleNamespace(path="own.pt"), model)
    assert isinstance(credit, OwnBackwardCredit) and credit.model is model and reason == ""


def test_check_takes_own_backward_by_name_and_refuses_another_name():
    model = FeedbackNet("dfa", init_dfa_feedback(CLASSES, [D] * (DEPTH + 1), torch.Generator().manual_seed(5)))
    kwargs = dict(batch_size=BATCH, frozen_acc=0.1, reference_model=_twin(model))
    by_name = pytest_fa.check(model, data(), credit="own-backward", **kwargs)
    by_class = pytest_fa.check(model, data(), credit=OwnBackwardCredit(model), **kwargs)
    assert by_name.gamma_per_layer == by_class.gamma_per_layer
    with pytest.raises(ModelInterfaceError, match="credit='dfa': give your method's credit signal.*or 'own-backward'"):
        pytest_fa.check(model, data(), credit="dfa", **kwargs)
