"""Equilibrium propagation on the residual energy.

The states ``s_0 … s_L`` minimise ``E(s) = ½‖r_0‖² + Σ_l ½‖r_{l+1}‖²`` with the prediction errors
``r_0 = s_0 − embed(x)``, ``r_{l+1} = s_{l+1} − s_l − f_l(s_l)``; the free phase is the feedforward
pass (E = 0), the nudged phase adds ``β · CE(head(norm(s_L)), y)`` and relaxes ``steps`` descent steps.
The credit is the state shift ``a_l = −(s_l^β − s_l^0) / β`` (``credit="displacement"``) or the
nudged prediction error ``a_l = −r_l^β / β`` (``credit="prediction-error"``, EP's parameter update).
The relaxation backtracks: a fixed step (``backtrack=False``, what bundles that record no
``backtrack`` were trained with) turns unstable once the block Jacobians grow, and drives EP into Mode 1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pytest_fa.core import interface
from pytest_fa.training.methods.base import LocalCreditMethod, hidden_states, require_vector_layout

CREDIT_RULES = ("prediction-error", "displacement")


def prediction_errors(model, states: Sequence[torch.Tensor], embedded: torch.Tensor) -> list[torch.Tensor]:
    """``[r_0, …, r_L]``: ``r_0 = s_0 − embed(x)``, ``r_{l+1} = s_{l+1} − s_l − f_l(s_l)``."""
    errors = [states[0] - embedded]
    for index, block in enumerate(model.blocks):
        errors.append(states[index + 1] - states[index] - block(states[index]))
    return errors


def relax(model, hiddens: Sequence[torch.Tensor], y: torch.Tensor, beta: float, steps: int, step_size: float,
          backtrack: bool = True):
    """Free and nudged states after ``steps`` of gradient descent on ``O = E + β·CE`` from the free states.

    A step that would raise a sample's ``O`` is taken back and that sample's step halved, so every
    ``‖r_l‖ ≤ √(2 β CE(s^0))`` however large the block Jacobians grow; ``backtrack=False`` takes every step.
    """
    free = [h.detach() for h in hiddens]
    states = [h.clone() for h in free]
    step = torch.full((len(y),), float(step_size), dtype=free[0].dtype, device=free[0].device)
    best = grads_best = objective_best = None
    with torch.enable_grad():
        for _ in range(steps + 1):
            states = [s.requires_grad_(True) for s in states]
            errors = prediction_errors(model, states, free[0])
            objective = sum(0.5 * r.pow(2).flatten(1).sum(1) for r in errors)
            objective = objective + beta * F.cross_entropy(interface.readout_logits(model, states[-1]), y, reduction="none")
            grads = torch.autograd.grad(objective.sum(), states)
            objective, states = objective.detach(), [s.detach() for s in states]
            if best is None:
                best, grads_best, objective_best = states, list(grads), objective
            else:
                accept = objective <= objective_best if backtrack else torch.ones_like(step, dtype=torch.bool)
                best = [_where(accept, s, b) for s, b in zip(states, best)]
                grads_best = [_where(accept, g, b) for g, b in zip(grads, grads_best)]
                objective_best = torch.where(accept, objective, objective_best)
                step = torch.where(accept, step, step / 2)
            states = [b - _per_sample(step, b) * g for b, g in zip(best, grads_best)]
    return free, best


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One value per sample, shaped to broadcast over the other dimensions of ``like``."""
    return values.view(-1, *[1] * (like.dim() - 1))


def _where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(_per_sample(mask, a), a, b)


def equilibrium_credits(model, hiddens: Sequence[torch.Tensor], y: torch.Tensor, beta: float, steps: int,
                        step_size: float, rule: str = "prediction-error", backtrack: bool = True) -> list[torch.Tensor]:
    """EP's credit ``a_l`` at each ``h_l`` (per sample, the scale of ``∂CE_i/∂h_l``)."""
    if rule not in CREDIT_RULES:
        raise ValueError(f"unknown EP credit rule {rule!r}; use one of {CREDIT_RULES}")
    free, states = relax(model, hiddens, y, beta, steps, step_size, backtrack)
    if rule == "displacement":
        return [-(s - f) / beta for s, f in zip(states, free)]
    with torch.no_grad():
        return [-r / beta for r in prediction_errors(model, states, free[0])]


class EquilibriumPropagation(LocalCreditMethod):
    """EP with the state-shift credit and a backtracking relaxation (see the module)."""

    name = "ep"
    # bundles written before this key existed were relaxed with fixed steps
    recorded_defaults = {"backtrack": False}

    def __init__(self, penalty: float = 0.0, beta: float = 0.1, steps: int = 6, step_size: float = 0.5,
                 credit: str = "displacement", backtrack: bool = True) -> None:
        super().__init__(penalty)
        if credit not in CREDIT_RULES:
            raise ValueError(f"unknown EP credit rule {credit!r}; use one of {CREDIT_RULES}")
        self.beta, self.steps, self.step_size = beta, steps, step_size
        self.rule, self.backtrack = credit, backtrack

    def config(self):
        return {"penalty": self.penalty, "beta": self.beta, "steps": self.steps, "step_size": self.step_size,
                "credit": self.rule, "backtrack": self.backtrack}

    def _credits(self, model, hiddens, y):
        return equilibrium_credits(model, hiddens, y, self.beta, self.steps, self.step_size, self.rule, self.backtrack)

    def training_credits(self, model, state, x, y, logits, outputs):
        require_vector_layout(model, "EP", outputs)
        return self._credits(model, hidden_states(outputs), y)

    def credit(self, model, state):
        return (lambda x, y, logits, hiddens: self._credits(model, hiddens, y)), ""
