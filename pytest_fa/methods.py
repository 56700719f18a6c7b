"""Training methods: how each computes its update and which credit signal it exposes.

A method owns three things: the loss whose gradient is its update, the auxiliary state it
needs (fixed feedback matrices, auxiliary nets) — which is saved with every checkpoint —
and the credit signal ``a_l`` that per-layer Γ compares with backprop.

Local-credit methods share the block loss ``⟨f_l(h_l), a⟩`` with ``h_l`` and the credit
detached, so gradient descent moves each module's output along ``−a``. The module that
writes ``h_l`` takes the credit at ``h_l``: the embedding takes ``a_0`` and block ``l``,
whose branch lands in ``h_{l+1}``, takes ``a_{l+1}``. The terminal norm and head take their
true local gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import interface
from .credit import BPCredit, CreditSignal, DFACredit, check_dfa_feedback, init_dfa_feedback
from .errors import CheckpointError


@dataclass
class MethodState:
    """What a method carries beside the model weights; all of it goes into the bundle."""

    feedback: list[torch.Tensor] = field(default_factory=list)
    aux: dict[str, nn.Module] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)


def feature_dims(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """Per-sample width ``F_l`` of each hidden state as the protocol reads it."""
    param = next(model.parameters())
    x = torch.zeros(2, *input_shape, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        _, hiddens = interface.forward_hidden(model, x)
    model.train(was_training)
    layout = interface.hidden_layout(model, hiddens[0])
    return [interface.per_sample(h, layout).shape[1] for h in hiddens]


def local_forward(model: nn.Module, x: torch.Tensor):
    """Forward pass with every block input detached.

    Returns ``(logits, [h_0, f_0(h_0), ..., f_{L-1}(h_{L-1})])``: the outputs each module
    writes, which the local losses pair with the credit; the logits see only a detached
    ``h_L``, so cross-entropy trains the terminal norm and head alone.
    """
    h = model.embed_input(x)
    outputs = [h]
    h = h.detach()
    for block in model.blocks:
        branch = block(h)
        outputs.append(branch)
        h = (h + branch).detach()
    return model.read_logits(h), outputs


def credit_loss(outputs: Sequence[torch.Tensor], credits: Sequence[torch.Tensor], layout: str) -> torch.Tensor:
    """``Σ_l mean_i ⟨out_l[i], a_l[i]⟩``; token outputs take their credit at every token."""
    total = outputs[0].new_zeros(())
    for out, a in zip(outputs, credits):
        a = a.detach()
        if layout == "tokens":
            a = a[:, None, :]
        else:
            a = a.reshape(out.shape)
        total = total + (out * a).sum() / out.shape[0]
    return total


class Method:
    """Base class; subclasses set ``name`` and override what differs."""

    name: ClassVar[str] = ""
    needs_feedback: ClassVar[bool] = False
    trains_blocks: ClassVar[bool] = True

    def setup(self, model: nn.Module, num_classes: int, input_shape, generator: torch.Generator) -> MethodState:
        return MethodState()

    def parameters(self, model: nn.Module, state: MethodState) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def loss(self, model: nn.Module, state: MethodState, x: torch.Tensor, y: torch.Tensor):
        """``(loss, logits)`` for one batch; ``loss.backward()`` gives the update."""
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    def credit(self, model: nn.Module, state: MethodState) -> tuple[CreditSignal | None, str]:
        """``(credit signal, reason)``; the reason says why the signal is None."""
        return None, f"method {self.name!r} exposes no credit signal"

    def restore(self, model: nn.Module, state: MethodState, num_classes: int, input_shape) -> MethodState:
        """Check the auxiliary state loaded from a bundle; raise if it is unusable."""
        return state


class Backprop(Method):
    name = "bp"

    def credit(self, model, state):
        layout_of = lambda t: interface.per_sample(t, interface.hidden_layout(model, t))  # noqa: E731
        return BPCredit(layout_of), ""


class FrozenBlocks(Method):
    """The depth-utilisation control: blocks stay at their random init, the rest trains by BP."""

    name = "frozen"
    trains_blocks = False

    def setup(self, model, num_classes, input_shape, generator):
        for p in interface.block_weights(model):
            p.requires_grad_(False)
        return MethodState()

    def credit(self, model, state):
        return None, "frozen-blocks baseline: its blocks are not trained, so there is no credit to align"


class DFA(Method):
    """Direct feedback alignment, optionally with the scale penalty ``λ ‖f_l(h_l)‖²``."""

    name = "dfa"
    needs_feedback = True

    def __init__(self, penalty: float = 0.0) -> None:
        self.penalty = penalty

    def setup(self, model, num_classes, input_shape, generator):
        dims = feature_dims(model, input_shape)
        param = next(model.parameters())
        feedback = [b.to(param.device) for b in init_dfa_feedback(num_classes, dims, generator)]
        return MethodState(feedback=feedback, config={"penalty": self.penalty})

    def loss(self, model, state, x, y):
        logits, outputs = local_forward(model, x)
        credits = DFACredit(state.feedback)(x, y, logits, outputs)
        layout = interface.hidden_layout(model, outputs[0])
        loss = F.cross_entropy(logits, y) + credit_loss(outputs, credits, layout)
        if self.penalty:
            loss = loss + self.penalty * sum(f.pow(2).sum() / f.shape[0] for f in outputs[1:])
        return loss, logits

    def credit(self, model, state):
        return DFACredit(state.feedback), ""

    def restore(self, model, state, num_classes, input_shape):
        dims = feature_dims(model, input_shape)
        state.feedback = check_dfa_feedback(state.feedback, num_classes, dims)
        return state


METHODS: dict[str, type[Method]] = {cls.name: cls for cls in (Backprop, FrozenBlocks, DFA)}


def get_method(name: str, **config: Any) -> Method:
    """Instantiate a registered method by name."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise CheckpointError(
            f"unknown method {name!r}; pytest-fa knows {', '.join(sorted(METHODS))}"
        ) from None
    try:
        return cls(**config)
    except TypeError as exc:
        raise CheckpointError(f"method {name!r} does not take config {config!r}: {exc}") from None
