"""The two probes of the reference study that learn their credit with auxiliary nets, saved with the checkpoint.

State Bridge: a net ``S_l`` learns to predict ``h_L`` from ``h_l``; the credit is the gradient of the head's loss
through it, ``a_l = ∂ CE(head(norm(S_l(h_l))), y) / ∂h_l`` (at the top, ``a_L`` is the head's own local gradient).
Credit Bridge: a scalar value net ``V_l`` learns the per-sample loss from ``h_l``; ``a_l = ∂V_l(h_l)/∂h_l``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core import interface
from pytest_fa.errors import FeedbackError
from pytest_fa.training.methods.base import LocalCreditMethod, MethodState, feature_dims, hidden_states, require_vector_layout


def _mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out))


def state_bridge_credits(model, bridges: nn.ModuleList, hiddens: Sequence[torch.Tensor], y) -> list[torch.Tensor]:
    credits = []
    with torch.enable_grad():
        for index, h in enumerate(hiddens):
            h = h.detach().requires_grad_(True)
            predicted = bridges[index](h) if index < len(bridges) else h
            loss = F.cross_entropy(interface.readout_logits(model, predicted), y, reduction="sum")
            credits.append(torch.autograd.grad(loss, h)[0])
    return credits


def credit_bridge_credits(values: nn.ModuleList, hiddens: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    credits = []
    with torch.enable_grad():
        for net, h in zip(values, hiddens):
            h = h.detach().requires_grad_(True)
            credits.append(torch.autograd.grad(net(h).sum(), h)[0])
    return credits


class _Bridge(LocalCreditMethod):
    """Its auxiliary nets are saved under its ``name``."""

    def __init__(self, penalty: float = 0.0, width: int = 128) -> None:
        super().__init__(penalty)
        self.width = width

    def config(self):
        return {"penalty": self.penalty, "width": self.width}

    def build(self, dims: list[int]) -> nn.ModuleList:
        raise NotImplementedError

    def setup(self, model, num_classes, input_shape, generator):
        net = self.build(feature_dims(model, input_shape)).to(next(model.parameters()).device)
        return MethodState(aux={self.name: net})

    def restore(self, model, state, num_classes, input_shape):
        saved = state.aux_state.get(self.name)
        if saved is None:
            raise FeedbackError(
                f"this {self.name} checkpoint carries no '{self.name}' nets, so its credit "
                "cannot be rebuilt and Γ would fall back to cos(BP, BP) = 1. Re-save the bundle "
                "with its auxiliary nets (pytest_fa.training.trainer writes them to bundle.aux)"
            )
        net = self.build(feature_dims(model, input_shape)).to(next(model.parameters()).device)
        try:
            net.load_state_dict(saved)
        except RuntimeError as exc:
            raise FeedbackError(f"the saved '{self.name}' nets do not match the model: {exc}") from None
        state.aux = {self.name: net}
        return state


class StateBridge(_Bridge):
    name = "state_bridge"

    def build(self, dims):
        return nn.ModuleList(_mlp(f, self.width, dims[-1]) for f in dims[:-1])

    def training_credits(self, model, state, x, y, logits, outputs):
        require_vector_layout(model, "State Bridge", outputs)
        return state_bridge_credits(model, state.aux[self.name], hidden_states(outputs), y)

    def aux_loss(self, model, state, x, y, logits, outputs):
        hs = hidden_states(outputs)
        scale = hs[-1].pow(2).sum(1).mean()
        return sum((net(h) - hs[-1]).pow(2).sum(1).mean() for net, h in zip(state.aux[self.name], hs)) / scale

    def credit(self, model, state):
        bridges = state.aux[self.name]
        return (lambda x, y, logits, hiddens: state_bridge_credits(model, bridges, hiddens, y)), ""


class CreditBridge(_Bridge):
    name = "credit_bridge"

    def build(self, dims):
        return nn.ModuleList(_mlp(f, self.width, 1) for f in dims)

    def training_credits(self, model, state, x, y, logits, outputs):
        require_vector_layout(model, "Credit Bridge", outputs)
        return credit_bridge_credits(state.aux[self.name], hidden_states(outputs))

    def aux_loss(self, model, state, x, y, logits, outputs):
        target = F.cross_entropy(logits.detach(), y, reduction="none")
        hs = hidden_states(outputs)
        return sum((net(h).squeeze(-1) - target).pow(2).mean() for net, h in zip(state.aux[self.name], hs))

    def credit(self, model, state):
        values = state.aux[self.name]
        return (lambda x, y, logits, hiddens: credit_bridge_credits(values, hiddens)), ""
