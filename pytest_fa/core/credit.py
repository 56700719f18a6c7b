"""Credit signals ``a_l``, what a method uses in place of the true gradient at ``h_l``: each a
:class:`~pytest_fa.core.reference.CreditSignal` returning per-sample rows ``(B, F)`` or None per state."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pytest_fa.core import interface
from pytest_fa.core.backprop import training_loss_gradient
from pytest_fa.core.reference import ce_grads
from pytest_fa.errors import FeedbackError


def output_error(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``e_T = softmax(logits) − onehot(y)``, detached: the error DFA broadcasts."""
    logits = logits.detach()
    return torch.softmax(logits, dim=-1) - F.one_hot(y, logits.shape[-1]).to(logits.dtype)


class BPCredit:
    """Backprop's own credit: ``a_l = dCE/dh_l`` by autograd (Γ = 1 up to rounding)."""

    def __init__(self, read) -> None:
        self._read = read

    def __call__(self, x, y, logits, hiddens):
        return [self._read(g) for g in ce_grads(logits, y, hiddens, retain_graph=True)]


OWN_BACKWARD = "own-backward"  # the credit setting that reads the model's own backward


class OwnBackwardCredit:
    """The method's own backward: ``a_l`` is what autograd delivers at ``h_l`` from the batch-mean
    ``CE`` through ``model`` as it is (None where it does not reach); a biotorch DFA model first gets
    this batch's loss gradient (:func:`~pytest_fa.core.backprop.training_loss_gradient`)."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, x, y, logits, hiddens):
        reached = [i for i, h in enumerate(hiddens) if h.requires_grad]
        with training_loss_gradient(self.model, logits, y):
            grads = ce_grads(logits, y, [hiddens[i] for i in reached], retain_graph=True, allow_unused=True)
        layout = interface.hidden_layout(self.model, hiddens[0])
        credits: list[torch.Tensor | None] = [None] * len(hiddens)
        for i, g in zip(reached, grads):
            credits[i] = None if g is None else interface.per_sample(g, layout)
        return credits


class DFACredit:
    """Direct feedback alignment: ``a_l = e_T B_l``, fixed random ``B_l`` of shape (classes, F),
    checked against the states at the first call."""

    layout = "(classes, d_l) so that a_l = e_T @ B_l"

    def __init__(self, feedback: Sequence[torch.Tensor]) -> None:
        self.feedback = list(feedback)
        self._checked = False

    def shapes(self, classes: int, widths: Sequence[int]) -> list[tuple[int, int]]:
        return [(classes, d) for d in widths]

    def __call__(self, x, y, logits, hiddens):
        _check_once(self, x, logits, hiddens)
        e = output_error(logits, y)
        return [e @ b.to(device=e.device, dtype=e.dtype) for b in self.feedback]


def init_dfa_feedback(num_classes: int, feature_dims: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
    """One fixed ``B_l ~ N(0, 1/classes)`` of shape ``(classes, F_l)`` per hidden state."""
    return [torch.randn(num_classes, f, generator=generator) / math.sqrt(num_classes) for f in feature_dims]


def check_dfa_feedback(feedback: Sequence[torch.Tensor], num_classes: int,
                       feature_dims: Sequence[int]) -> list[torch.Tensor]:
    """Validate DFA feedback matrices against the model; raise :class:`FeedbackError` if off."""
    expected = [(num_classes, f) for f in feature_dims]
    return check_feedback(feedback, expected, "(classes, features) so that a_l = e_T @ B_l")


class FACredit:
    """Feedback alignment from the top: ``a_L = e_T B_L``, ``a_l = a_{l+1} B_l``; ``B_L`` is (classes, F_L),
    ``B_l`` (F_{l+1}, F_l), the fixed random matrix in place of the transposed Jacobian."""

    layout = "((d_{l+1}, d_l) below the top, (classes, d_L) on top)"

    def __init__(self, feedback: Sequence[torch.Tensor]) -> None:
        self.feedback = list(feedback)
        self._checked = False

    def shapes(self, classes: int, widths: Sequence[int]) -> list[tuple[int, int]]:
        return expected_fa_shapes(classes, widths)

    def __call__(self, x, y, logits, hiddens):
        _check_once(self, x, logits, hiddens)
        e = output_error(logits, y)
        credits = [e @ self.feedback[-1].to(e)]
        for b in reversed(self.feedback[:-1]):
            credits.append(credits[-1] @ b.to(e))
        return credits[::-1]


def init_fa_feedback(num_classes: int, feature_dims: Sequence[int], generator: torch.Generator) -> list[torch.Tensor]:
    """``B_l ~ N(0, 1/F_{l+1})`` of shape (F_{l+1}, F_l) for l < L, and (classes, F_L) on top."""
    dims = list(feature_dims)
    chain = [torch.randn(dims[l + 1], dims[l], generator=generator) / math.sqrt(dims[l + 1]) for l in range(len(dims) - 1)]
    return [*chain, torch.randn(num_classes, dims[-1], generator=generator) / math.sqrt(num_classes)]


def expected_fa_shapes(num_classes: int, feature_dims: Sequence[int]) -> list[tuple[int, int]]:
    dims = list(feature_dims)
    return [(dims[l + 1], dims[l]) for l in range(len(dims) - 1)] + [(num_classes, dims[-1])]


def check_feedback(feedback: Sequence[torch.Tensor], expected: Sequence[tuple[int, int]],
                   layout_hint: str) -> list[torch.Tensor]:
    """Validate feedback matrices against the shapes the model needs; :class:`FeedbackError` if off."""
    feedback = list(feedback)
    if len(feedback) != len(expected):
        raise FeedbackError(f"expected {len(expected)} feedback matrices (one per hidden state h_0..h_L), "
                            f"found {len(feedback)}")
    for index, (b, shape) in enumerate(zip(feedback, expected)):
        if not isinstance(b, torch.Tensor):
            raise FeedbackError(f"feedback matrix B_{index} is a {type(b).__name__}, not a tensor")
        if tuple(b.shape) == shape[::-1] and shape[0] != shape[1]:
            raise FeedbackError(
                f"feedback matrix B_{index} has shape {tuple(b.shape)}: it looks transposed; "
                f"pytest-fa expects {shape} {layout_hint}"
            )
        if tuple(b.shape) != shape:
            raise FeedbackError(f"feedback matrix B_{index} has shape {tuple(b.shape)}, expected {shape} {layout_hint}")
        if not torch.isfinite(b).all():
            raise FeedbackError(f"feedback matrix B_{index} contains NaN or Inf")
    return feedback


def _check_once(credit: DFACredit | FACredit, x: torch.Tensor, logits: torch.Tensor, hiddens) -> None:
    """Check ``credit.feedback`` against the states of its first call (if any): a state ``(B, T, d)``
    has width ``d``, any other is flattened; :class:`FeedbackError` names the matrix that does not fit."""
    if credit._checked or hiddens is None:
        return
    name, classes = type(credit).__name__, logits.shape[-1]
    readings = [[h.shape[-1] if h.dim() == 3 else h[0].numel() for h in hiddens], [h[0].numel() for h in hiddens]]
    try:
        check_feedback(credit.feedback, credit.shapes(classes, readings[0]), credit.layout)
    except FeedbackError as exc:
        try:  # a model may declare its (B, C, L) states spatial: read flattened, they may fit
            check_feedback(credit.feedback, credit.shapes(classes, readings[1]), credit.layout)
        except FeedbackError:
            hint = ""
            if _per_linear(credit.feedback, x, classes):
                hint = (f". These look like per-layer FA matrices, one out × in matrix per Linear (biotorch "
                        f"style): they do not fit {name}, which needs one matrix per hidden state h_0..h_L")
            raise FeedbackError(f"{name}: {exc}{hint}") from None
    credit._checked = True


def _per_linear(feedback: Sequence[torch.Tensor], x: torch.Tensor, classes: int) -> bool:
    """Whether ``feedback`` has the shapes of a network's weights: conv kernels, or out × in matrices
    chained from the input's width to the classes."""
    tensors = [b for b in feedback if isinstance(b, torch.Tensor)]
    if len(tensors) != len(feedback) or not tensors:
        return False
    if any(b.dim() != 2 for b in tensors):
        return True
    chained = all(a.shape[0] == b.shape[1] for a, b in zip(tensors, tensors[1:]))
    inputs = None if x is None else x[0].numel()
    return chained and tensors[0].shape[1] == inputs and tensors[-1].shape[0] == classes
