"""The method interface: how a method computes its update and which credit signal it exposes.

Local-credit methods share the block loss ``⟨f_l(h_l), a⟩`` with ``h_l`` and the credit
detached, so gradient descent moves each module's output along ``−a``. The module that
writes ``h_l`` takes the credit at ``h_l``: the embedding takes ``a_0`` and block ``l``,
whose branch lands in ``h_{l+1}``, takes ``a_{l+1}``. The terminal norm and head take their
true local gradient.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.reference import CreditSignal
from pytest_fa.errors import ModelInterfaceError


@dataclass
class MethodState:
    """What a method carries beside the model weights; all of it goes into the bundle."""

    feedback: list[torch.Tensor] = field(default_factory=list)
    aux: dict[str, nn.Module] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    aux_state: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)


def feature_dims(model: nn.Module, input_shape: Sequence[int]) -> list[int]:
    """Per-sample width ``F_l`` of each hidden state as the protocol reads it."""
    param = next(model.parameters())
    x = torch.zeros(2, *input_shape, device=param.device, dtype=param.dtype)
    with torch.no_grad(), interface.eval_mode(model):
        _, hiddens = interface.forward_hidden(model, x)
    layout = interface.hidden_layout(model, hiddens[0])
    return [interface.per_sample(h, layout).shape[1] for h in hiddens]


def local_forward(model: nn.Module, x: torch.Tensor):
    """``(logits, [h_0, f_0(h_0), ..., f_{L-1}(h_{L-1})])`` with every block input detached; the
    logits see a detached ``h_L``, so cross-entropy trains the terminal norm and head alone."""
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
        a = a.detach()[:, None, :] if layout in ("tokens", "tokens_all") else a.detach().reshape(out.shape)
        total = total + (out * a).sum() / out.shape[0]
    return total


class Method:
    """Base class; subclasses set ``name`` and override what differs."""

    name: ClassVar[str] = ""
    needs_feedback: ClassVar[bool] = False
    recorded_defaults: ClassVar[dict[str, Any]] = {}
    """Config of a bundle written before a key existed (its behaviour then); filled in on loading."""

    def config(self) -> dict[str, Any]:
        """The constructor arguments: ``get_method(name, **config())`` rebuilds the method."""
        return {}

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


def require_vector_layout(model: nn.Module, method: str, outputs: Sequence[torch.Tensor]) -> None:
    layout = interface.hidden_layout(model, outputs[0])
    if layout != "vector":
        raise ModelInterfaceError(
            f"{method} is implemented for models with (B, d) hidden states (ResMLP, StudentNet); "
            f"{type(model).__name__} has {layout} states"
        )


def hidden_states(outputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``[h_0, ..., h_L]`` (detached) from the outputs of :func:`local_forward`."""
    return list(accumulate(out.detach() for out in outputs))


def scale_penalty(branches: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_l mean_i ‖f_l(h_l)[i]‖²``: the residual-branch scale penalty."""
    return sum(f.pow(2).sum() / f.shape[0] for f in branches)


class LocalCreditMethod(Method):
    """Trains each module by ``⟨output, a⟩``: subclasses give :meth:`training_credits` (the update's
    ``a_l``) and :meth:`credit` (the same rule for Γ); ``penalty`` adds ``λ Σ_l ‖f_l(h_l)‖²``."""

    def __init__(self, penalty: float = 0.0) -> None:
        self.penalty = penalty

    def config(self) -> dict[str, Any]:
        return {"penalty": self.penalty}

    def training_credits(self, model, state, x, y, logits, outputs) -> list[torch.Tensor]:
        raise NotImplementedError

    def aux_loss(self, model, state, x, y, logits, outputs) -> torch.Tensor | None:
        return None

    def parameters(self, model, state):
        return [p for net in (model, *state.aux.values()) for p in net.parameters() if p.requires_grad]

    def loss(self, model, state, x, y):
        logits, outputs = local_forward(model, x)
        credits = self.training_credits(model, state, x, y, logits, outputs)
        layout = interface.hidden_layout(model, outputs[0])
        loss = F.cross_entropy(logits, y) + credit_loss(outputs, credits, layout)
        if self.penalty:
            loss = loss + self.penalty * scale_penalty(outputs[1:])
        aux = self.aux_loss(model, state, x, y, logits, outputs)
        if aux is not None:
            loss = loss + aux
        return loss, logits
