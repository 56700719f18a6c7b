"""W-vs-B: the angle between a forward weight and the feedback matrix that stands in for it.

``angle(W, B) = degrees(arccos(⟨W, B⟩ / (‖W‖ ‖B‖)))`` over the flattened matrices, in float64:
0° when ``B`` is the weight itself, 90° when orthogonal, 180° when opposite. pytest-fa stores
a feedback matrix in the orientation of the weight whose transpose it replaces (``a = e B``
where backprop has ``g = e W``), so the two are compared as they are.

- FA (``a_l = a_{l+1} B_l``): ``B_L`` (classes × d) stands in for the head's weight; ``B_l``
  for ``l < L`` for the Jacobian of block ``l``'s step ``h_l → h_{l+1}``, compared with the
  product of the block's ``Linear`` weights ``W_k ⋯ W_1`` (its branch with the activation and
  norm taken as identity; the identity path is every model's and is left out). A block with
  any other weighted module (attention, convolution) has no such product: not defined.
- DFA (``a_l = e B_l``): ``B_L`` against the head's weight, as for FA. ``B_l`` for ``l < L``
  stands in for the head's weight times the stream's Jacobians from ``h_l`` to ``h_L``, which
  depend on the input: not defined.
- biotorch-style layers carry ``weight`` and ``weight_backward`` (the matrix their backward
  uses in place of ``weight``): :func:`weight_backward_angles`, found by those names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.errors import FAError

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
DFA_BELOW_TOP = (
    "not defined: DFA's B_l below the top stands in for the head's weight times the Jacobians "
    "from h_l to h_L, which depend on the input"
)


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
            weight, why = _head_weight(head)
        elif method == "fa":
            weight, why = _branch_weight(blocks[index])
        else:
            weight, why = None, DFA_BELOW_TOP
        if weight is not None and tuple(weight.shape) != tuple(b.shape):
            weight, why = None, f"not defined: B_{index} is {tuple(b.shape)}, the weight {tuple(weight.shape)}"
        angle = None if weight is None else angle_deg(weight, b)
        rows.append((angle, why if weight is None else "ok" if angle is not None else "not defined: a zero matrix"))
    return rows


def _head_weight(head: nn.Module) -> tuple[torch.Tensor | None, str]:
    weight = getattr(head, "weight", None)
    if isinstance(head, nn.Linear) and isinstance(weight, torch.Tensor):
        return weight, "ok"
    return None, f"not defined: the head {type(head).__name__} is not one Linear layer"


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
    found = []
    for name, module in model.named_modules():
        weight, backward = getattr(module, "weight", None), getattr(module, "weight_backward", None)
        if isinstance(weight, torch.Tensor) and isinstance(backward, torch.Tensor) and weight.shape == backward.shape:
            found.append((name, angle_deg(weight, backward)))
    return found
