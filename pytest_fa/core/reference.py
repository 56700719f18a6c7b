"""The BP reference pass: one forward pass, ``CE``, and ``g_l = dCE/dh_l`` by autograd, the one
place every measurement takes its reference from; a credit signal is evaluated on the same pass."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.backprop import BackpropCheck, check_twin
from pytest_fa.errors import CreditSignalError, FAError, ModelInterfaceError, NonFiniteError, setting


class CreditSignal(Protocol):
    """``credit(x, y, logits, hiddens) -> [a_0, ..., a_L]`` (entries ``(B, F)`` or None): a
    method's credit, evaluated on the reference pass (:data:`CREDIT_CONTRACT`)."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor,
                 hiddens: list[torch.Tensor]) -> Sequence[torch.Tensor | None]: ...


@dataclass
class ReferencePass:
    """One batch: the logits, the states ``h_0 … h_L`` (graph tensors), the reference
    ``g_l = dCE/dh_l`` and ``dCE/dz`` at the logits, the per-sample layout, and the credit
    ``a_l`` (``None`` without a credit signal)."""

    logits: torch.Tensor
    hiddens: list[torch.Tensor]
    grads: list[torch.Tensor]
    logit_grad: torch.Tensor
    layout: str
    credits: list[torch.Tensor | None] | None = None

    @property
    def rows(self) -> list[torch.Tensor]:
        """Per-sample rows of ``g_l`` in this pass's layout."""
        return [interface.per_sample(g, self.layout) for g in self.grads]

    def credited_rows(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``([a_l], [g_l])``, detached per-sample rows, at the layers the credit assigns."""
        pairs = [(a, g) for a, g in zip(self.credits or [], self.rows) if a is not None]
        return [a.detach() for a, _ in pairs], [g.detach() for _, g in pairs]


def ce_grads(logits: torch.Tensor, y: torch.Tensor, states: Sequence[torch.Tensor], *, reduction: str = "mean",
             retain_graph: bool = False, allow_unused: bool = False) -> list[torch.Tensor | None]:
    """``dCE/ds`` for each of ``states`` (``CE`` the batch-``reduction`` cross-entropy)."""
    loss = F.cross_entropy(logits, y, reduction=reduction)
    return list(torch.autograd.grad(loss, list(states), retain_graph=retain_graph, allow_unused=allow_unused))


def reference_pass(model: nn.Module, x: torch.Tensor, y: torch.Tensor, credit: CreditSignal | None = None, *,
                   reduction: str = "mean", keep_graph: bool = False,
                   reference_model: nn.Module | None = None) -> ReferencePass:
    """Run ``model`` on one batch in its current mode and dtype and take the reference (``x`` moved to
    its device and float dtype); refuses detached or unused states, a backward that is not backprop and
    NaN/Inf. ``reference_model``, a true-backprop twin, gives ``g_l`` and ``dCE/dz`` instead."""
    param = next(model.parameters())
    x = x.to(device=param.device, dtype=param.dtype if x.is_floating_point() else x.dtype)
    y = y.to(param.device)
    if x.is_floating_point():
        x.requires_grad_(True)
    with torch.enable_grad():
        logits, hiddens = _forward(model, x, checked=reference_model is None)
        source, ref_logits, ref_hiddens = model, logits, hiddens
        if reference_model is not None:
            source = reference_model
            ref_logits, ref_hiddens = _forward(reference_model, x, checked=True)
            check_twin(model, (logits, hiddens), (ref_logits, ref_hiddens))
        *grads, logit_grad = ce_grads(
            ref_logits, y, [*ref_hiddens, ref_logits], reduction=reduction,
            retain_graph=credit is not None or keep_graph, allow_unused=True,
        )
        for index, g in enumerate(grads):
            if g is None:
                raise ModelInterfaceError(
                    f"{interface.state_name(source, index)} is not on the path from the input to "
                    "the logits; the model must return the hidden states its forward pass uses (a "
                    "forward pass that cuts the graph between them, as a method may, is not backprop: "
                    f"give a twin that backpropagates truly, {setting('reference_model')})"
                )
            if not torch.isfinite(g).all():
                raise NonFiniteError(
                    f"the BP gradient at h_{index} contains NaN or Inf; the model is outside "
                    "the range its dtype can represent (try a float64 probe)"
                )
        layout = interface.hidden_layout(model, hiddens[0])
        result = ReferencePass(logits, hiddens, grads, logit_grad, layout)
        if credit is not None:
            result.credits = checked_credits(credit, (x, y, logits, hiddens), result.rows)
    return result


CREDIT_CONTRACT = (
    "a credit signal is called as credit(x, y, logits, hiddens) and returns [a_0, ..., a_L]: per state h_l, "
    "one tensor of per-sample rows shaped like its reference gradient's, or None"
)


def checked_credits(credit: CreditSignal, args: tuple, rows: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """``credit(*args)`` as a list with one tensor shaped like ``rows[l]`` (or None) per state; a
    :class:`~pytest_fa.errors.CreditSignalError` when it raises (an ``FAError`` passes) or returns anything else."""
    try:
        out = credit(*args)
    except FAError:
        raise
    except Exception as exc:  # noqa: BLE001 — the user's code: say whose error it is
        raise CreditSignalError(f"the credit signal raised {type(exc).__name__}: {exc}; {CREDIT_CONTRACT}") from exc
    if isinstance(out, (torch.Tensor, str)) or not isinstance(out, Iterable):
        raise CreditSignalError(f"the credit signal returned {type(out).__name__}, not a list; {CREDIT_CONTRACT}")
    credits = list(out)
    if len(credits) != len(rows):
        raise CreditSignalError(
            f"the credit signal returned {len(credits)} layers for {len(rows)} hidden states; "
            f"return one entry (or None) per h_0..h_L; {CREDIT_CONTRACT}"
        )
    for index, (a, g) in enumerate(zip(credits, rows)):
        if a is not None and not isinstance(a, torch.Tensor):
            raise CreditSignalError(f"credit a_{index} is {type(a).__name__}, not a tensor; {CREDIT_CONTRACT}")
        if a is not None and tuple(a.shape) != tuple(g.shape):
            raise CreditSignalError(
                f"credit a_{index} has shape {tuple(a.shape)} but the reference gradient at "
                f"h_{index} is read as {tuple(g.shape)}; return per-sample rows (B, F)"
            )
    return credits


def _forward(model: nn.Module, x: torch.Tensor, *, checked: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model(x, return_hidden=True)``: finite logits, and, when ``checked``, states in the
    graph whose gradient autograd gives by backprop."""
    check = BackpropCheck(model) if checked else None
    with check or contextlib.nullcontext():
        logits, hiddens = interface.forward_hidden(model, x)
    if not torch.isfinite(logits).all():
        raise NonFiniteError("the logits contain NaN or Inf on an eval batch")
    if check is not None:
        detached = [i for i, h in enumerate(hiddens) if not h.requires_grad]
        if detached:
            raise ModelInterfaceError(
                f"{interface.state_name(model, detached[0])} is detached from the graph; the "
                "states must be the tensors the forward pass uses, not .detach()ed copies"
            )
        check.verify(logits, hiddens)
    return logits, hiddens
