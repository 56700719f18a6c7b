"""The frozen-blocks control of diagnostic (d) for a model of your own: the trained model's architecture at its
initial weights with the blocks' weights frozen; the embedding, the norms and the head train by backprop with the
trained model's recipe and epochs. A control trained less than the model inflates (d)'s margin.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.adapter import HookedModel, match_path
from pytest_fa.errors import FABudgetWarning, ModelInterfaceError, setting
from pytest_fa.models import load_weights


def frozen_control(
    model: nn.Module,
    blocks: str | Sequence[str] | None = None,
    *,
    init_state: dict[str, Any] | None = None,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` at its initial weights with the blocks' weights frozen: the control of (d).

    The initial weights are ``init_state`` (the ``state_dict()`` saved before training) or else
    each module's ``reset_parameters()`` under ``seed``. ``blocks``: module paths or patterns
    (``"blocks.*"``), by default the model's blocks. Train the copy's ``requires_grad``
    parameters with the model's recipe and as many epochs.
    """
    control = copy.deepcopy(model)
    inner = control.model if isinstance(control, HookedModel) else control
    if init_state is not None:
        load_weights(inner, init_state, "init_state")
    else:
        _draw_again(inner, seed)
    freeze_blocks(control, None if blocks is None else _named_blocks(inner, blocks))
    return control


def freeze_blocks(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> list[nn.Parameter]:
    """``requires_grad_(False)`` on the blocks' weights (:func:`~pytest_fa.core.interface.block_weights`);
    a model with no trainable parameter left has no control to train."""
    frozen = interface.block_weights(model, modules)
    for p in frozen:
        p.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise ModelInterfaceError(
            f"{type(model).__name__} has no trainable parameter outside the blocks' weights, so a frozen-blocks "
            "control cannot be trained for it: it is the untrained model. Measure that model's accuracy and pass "
            f"it with {setting('frozen_acc', 'ACC')}"
        )
    return frozen


def check_budget(trained_epochs: int | None, frozen_epochs: int | None, subject: str = "(d)") -> None:
    """:class:`~pytest_fa.errors.FABudgetWarning` when both budgets are stated and differ."""
    if trained_epochs is not None and frozen_epochs is not None and trained_epochs != frozen_epochs:
        warnings.warn(FABudgetWarning(
            f"{subject}: the frozen-blocks control was trained for {frozen_epochs} epochs but the model for "
            f"{trained_epochs}: (d) compares budgets that differ, and a control trained less inflates the margin. "
            "Train the control as long as the model, with the same recipe"
        ), stacklevel=3)


def _draw_again(model: nn.Module, seed: int) -> None:
    """Each module's ``reset_parameters()`` under ``seed``, the caller's random streams left alone."""
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    stuck = []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if devices:
            torch.cuda.manual_seed_all(seed)
        for name, module in model.named_modules():
            reset = getattr(module, "reset_parameters", None) or getattr(module, "_reset_parameters", None)
            if callable(reset):
                reset()
            else:
                stuck += [".".join(filter(None, (type(model).__name__, name, p)))
                          for p, _ in module.named_parameters(recurse=False)]
    if stuck:
        raise ModelInterfaceError(
            f"cannot draw the initial value of {', '.join(stuck[:3])}{' …' if len(stuck) > 3 else ''} again "
            "(no reset_parameters() of its module draws it); pass init_state=<the model's state_dict() "
            "before training>, e.g. of a freshly built model"
        )


def _named_blocks(model: nn.Module, blocks: str | Sequence[str]) -> list[nn.Module]:
    patterns = [p.strip() for p in (blocks.split(",") if isinstance(blocks, str) else blocks) if p.strip()]
    found = [m for name, m in model.named_modules() if name and any(match_path(p, name) for p in patterns)]
    if not found:
        top = [name for name, _ in model.named_children()][:12]
        raise ModelInterfaceError(
            f"blocks={blocks!r} matches no module of {type(model).__name__}; its top-level modules are {top} "
            "(a pattern is matched one dotted segment at a time: 'blocks.*' names blocks.0, blocks.1, …)"
        )
    return found
