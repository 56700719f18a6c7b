"""W-vs-B: ``angle(W, B) = degrees(arccos(⟨W, B⟩ / (‖W‖ ‖B‖)))`` over the flattened matrices, in float64,
between a forward weight and the feedback matrix that stands in for it (stored in the weight's orientation).

``B_L`` stands in for the head's weight; FA's ``B_l`` below it for block ``l``'s step ``h_l → h_{l+1}``,
compared with the product ``W_k ⋯ W_1`` of its ``Linear`` weights (not defined for other weighted modules);
DFA's ``B_l`` below the top has no input-independent weight. biotorch-style layers carry ``weight`` and
``weight_backward``: :func:`weight_backward_angles`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.errors import FAError

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)


def angle_deg(weight: torch.Tensor, feedback: torch.Tensor) -> float | None:
    """Degrees between the flattened ``weight`` and ``feedback`` in float64 (None: a zero matrix)."""
    w = weight.detach().reshape(-1).to(torch.float64)
    b = feedback.detach().reshape(-1).to(device=w.device, dtype=torch.float64)
    ww, bb = float(w @ w), float(b @ b)
    if ww == 0.0 or bb == 0.0:
        return None
    cosine = float(w @ b) / math.sqrt(ww * bb)
    return math.degrees(math.acos(max(-1.0, min(1.0, cosine))))


def feedback_angles(model: nn.Module, feedback: Sequence[torch.Tensor], method: str) -> list[tuple[float | None, str]]:
    """Per state ``h_0 … h_L``, ``(angle of B_l with the weight it stands in for, status)``;
    ``method`` is ``"fa"`` or ``"dfa"``."""
    try:
        blocks = list(interface.blocks(model))
        _, head = interface.readout(model)
    except FAError as exc:
        return [(None, f"not defined: {exc}")] * len(feedback)
    if len(feedback) != len(blocks) + 1:
        return [(None, f"not defined: {len(feedback)} feedback matrices for {len(blocks) + 1} states")] * len(feedback)
    rows = []
    for index, b in enumerate(feedback):
        if index == len(blocks):
            weight, why = (head.weight, "ok") if isinstance(head, nn.Linear) else (
                None, f"not defined: the head {type(head).__name__} is not one Linear layer")
        elif method == "fa":
            weight, why = _branch_weight(blocks[index])
        else:
            weight, why = None, ("not defined: DFA's B_l below the top stands in for the head's weight times the "
                                 "Jacobians from h_l to h_L, which depend on the input")
        if weight is not None and tuple(weight.shape) != tuple(b.shape):
            weight, why = None, f"not defined: B_{index} is {tuple(b.shape)}, the weight {tuple(weight.shape)}"
        angle = None if weight is None else angle_deg(weight, b)
        rows.append((angle, why if weight is None else "ok" if angle is not None else "not defined: a zero matrix"))
    return rows


def _branch_weight(block: nn.Module) -> tuple[torch.Tensor | None, str]:
    """``W_k ⋯ W_1`` of the block's ``Linear`` layers in order, when they are its only weights
    besides norms and chain in shape."""
    linears = []
    for module in block.modules():
        if not any(True for _ in module.parameters(recurse=False)) or isinstance(module, _NORMS):
            continue
        if not isinstance(module, nn.Linear):
            return None, f"not defined: block {type(block).__name__} holds a {type(module).__name__}, not only Linear layers"
        linears.append(module.weight.detach().to(torch.float64))
    if not linears or any(a.shape[0] != b.shape[1] for a, b in zip(linears, linears[1:])):
        return None, f"not defined: the Linear layers of block {type(block).__name__} do not form one chain"
    product = linears[0]
    for weight in linears[1:]:
        product = weight @ product
    return product, "ok"


def weight_backward_angles(model: nn.Module) -> list[tuple[str, float | None]]:
    """``(module name, angle of weight with weight_backward)`` for every module carrying both
    with one shape (biotorch's FA layers), in module order."""
    pairs = ((name, getattr(module, "weight", None), getattr(module, "weight_backward", None))
             for name, module in model.named_modules())
    return [(name, angle_deg(w, b)) for name, w, b in pairs
            if isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor) and w.shape == b.shape]
