"""Equilibrium propagation on the residual energy.

The states ``s_0 … s_L`` minimise ``E(s) = ½‖s_0 − embed(x)‖² + Σ_l ½‖s_{l+1} − s_l − f_l(s_l)‖²``,
whose minimum (E = 0) is the feedforward pass: the free phase needs no relaxation. The
nudged phase adds ``β · CE(head(norm(s_L)), y)`` and relaxes the states by ``steps`` of
gradient descent with ``step_size`` from the free equilibrium. The credit is the state shift
``a_l = −(s_l^β − s_l^0) / β``, which tends to the per-sample ``∂CE/∂h_l`` as β → 0 and the
relaxation converges; with a few steps the nudge reaches the lower layers only in part.
Each module then trains by ``⟨output, a⟩`` — EP's own parameter update for this energy.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .. import interface
from .base import LocalCreditMethod, hidden_states, require_vector_layout


def equilibrium_credits(
    model, hiddens: Sequence[torch.Tensor], y: torch.Tensor, beta: float, steps: int, step_size: float
) -> list[torch.Tensor]:
    free = [h.detach() for h in hiddens]
    states = [h.clone() for h in free]
    with torch.enable_grad():
        for _ in range(steps):
            states = [s.requires_grad_(True) for s in states]
            energy = 0.5 * (states[0] - free[0]).pow(2).sum()
            for index, block in enumerate(model.blocks):
                residual = states[index + 1] - states[index] - block(states[index])
                energy = energy + 0.5 * residual.pow(2).sum()
            cost = F.cross_entropy(interface.readout_logits(model, states[-1]), y, reduction="sum")
            grads = torch.autograd.grad(energy + beta * cost, states)
            states = [(s - step_size * g).detach() for s, g in zip(states, grads)]
    return [-(s - f) / beta for s, f in zip(states, free)]


class EquilibriumPropagation(LocalCreditMethod):
    name = "ep"

    def __init__(self, penalty: float = 0.0, beta: float = 0.1, steps: int = 6, step_size: float = 0.5) -> None:
        super().__init__(penalty)
        self.beta, self.steps, self.step_size = beta, steps, step_size

    def config(self):
        return {"penalty": self.penalty, "beta": self.beta, "steps": self.steps, "step_size": self.step_size}

    def training_credits(self, model, state, x, y, logits, outputs):
        require_vector_layout(model, "EP", outputs)
        return equilibrium_credits(model, hidden_states(outputs), y, self.beta, self.steps, self.step_size)

    def credit(self, model, state):
        def signal(x, y, logits, hiddens):
            return equilibrium_credits(model, hiddens, y, self.beta, self.steps, self.step_size)

        return signal, ""
