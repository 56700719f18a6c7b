"""Backprop (optionally with the scale penalty) and the frozen-blocks control."""

from __future__ import annotations

import torch.nn.functional as F

from pytest_fa.core import interface
from pytest_fa.core.credit import BPCredit
from pytest_fa.training.frozen import freeze_blocks
from pytest_fa.training.methods.base import Method, MethodState, scale_penalty


class Backprop(Method):
    """End-to-end backprop; ``penalty`` adds ``λ Σ_l ‖f_l(h_l)‖²`` (the capacity-cost control)."""

    name = "bp"

    def __init__(self, penalty: float = 0.0) -> None:
        self.penalty = penalty

    def config(self):
        return {"penalty": self.penalty} if self.penalty else {}

    def loss(self, model, state, x, y):
        if not self.penalty:
            return super().loss(model, state, x, y)
        logits, hiddens = interface.forward_hidden(model, x)
        branches = [after - before for before, after in zip(hiddens, hiddens[1:])]
        return F.cross_entropy(logits, y) + self.penalty * scale_penalty(branches), logits

    def credit(self, model, state):
        layout_of = lambda t: interface.per_sample(t, interface.hidden_layout(model, t))  # noqa: E731
        return BPCredit(layout_of), ""


class FrozenBlocks(Method):
    """The depth-utilisation control: blocks stay at their random init, the rest trains by BP."""

    name = "frozen"

    def setup(self, model, num_classes, input_shape, generator):
        freeze_blocks(model)
        return MethodState()

    def credit(self, model, state):
        return None, "frozen-blocks baseline: its blocks are not trained, so there is no credit to align"
