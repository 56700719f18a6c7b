"""Which block learned, without training: the accuracy with one block removed or reset.

For block ``l`` (its branch lands in ``h_{l+1}``), in pp of the top-1 accuracy measured as the headline is::

    drop_l = acc − acc(branch l removed)      h_{l+1} = h_l: the block's output replaced by its input
    reset_l = acc − acc(block l reset)         block l at its initial weights, the others as trained
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.errors import FAError


@dataclass
class BlockAblation:
    """Block ``block`` (writes ``h_{block+1}``): the drops in pp, or None with the status saying why."""

    block: int
    removed_drop_pp: float | None
    removed_status: str
    reset_drop_pp: float | None
    reset_status: str


@dataclass
class Ablation:
    """The accuracy ``accuracy`` on ``samples`` samples and one row per block; ``status`` is
    ``"ok"`` or ``"not defined: …"`` (no rows) for a model whose blocks cannot be found."""

    accuracy: float | None
    samples: int
    status: str
    blocks: list[BlockAblation] = field(default_factory=list)


class _ShapeChange(Exception):
    """A block whose output shape differs from its input: its removal is not defined."""


def block_ablation(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, init_state: dict[str, Any] | None = None,
                   reset_unavailable: str = "no initial weights given (init_state)",
                   accuracy: float | None = None) -> Ablation:
    """Per block, the drops removed and reset to ``init_state`` (the model's, or the adapted model's inner,
    ``state_dict()`` at initialisation; without it ``not available: reset_unavailable``) on ``(x, y)`` in eval
    mode; ``accuracy``: the model's own on ``(x, y)`` when already measured. A block that changes the shape
    cannot be removed; the model is restored exactly, also on error."""
    try:
        blocks = list(interface.blocks(model))
        if not blocks:
            raise FAError(f"{type(model).__name__}.blocks is empty")
        mode = _block_output(model, x)
    except FAError as exc:
        return Ablation(None, len(y), f"not defined: the blocks cannot be found ({exc})")
    with interface.eval_mode(model):
        acc = interface.accuracy(model, x, y) if accuracy is None else accuracy
        rows = []
        for index, block in enumerate(blocks):
            removed, removed_status = _removed(model, block, mode, x, y)
            reset, reset_status = _reset(model, block, init_state, reset_unavailable, x, y)
            rows.append(BlockAblation(
                index, None if removed is None else 100.0 * (acc - removed), removed_status,
                None if reset is None else 100.0 * (acc - reset), reset_status,
            ))
    return Ablation(acc, len(y), "ok", rows)


def _block_output(model: nn.Module, x: torch.Tensor) -> str:
    """``"branch"`` (blocks return ``f(h)``, the interface's contract) or ``"sum"`` (``h + f(h)``,
    an adapted model that says so; its first forward pass reads which)."""
    if getattr(model, "block_output", None) is None:
        return "branch"
    if getattr(model, "_mode", None) is None:
        with torch.no_grad(), interface.eval_mode(model):
            interface.forward_hidden(model, x[:2])
    return model._mode


def _removed(model, block, mode, x, y) -> tuple[float | None, str]:
    """The accuracy with ``block``'s output replaced so that ``h_{l+1} = h_l``."""

    def remove(module, args, output):
        given = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if given is None or not isinstance(output, torch.Tensor) or given.shape != output.shape:
            shape = None if given is None else tuple(given.shape[1:])
            raise _ShapeChange(f"maps {shape} to {tuple(getattr(output, 'shape', ())[1:])}")
        return given if mode == "sum" else torch.zeros_like(output)

    handle = block.register_forward_hook(remove)
    try:
        return interface.accuracy(model, x, y), "ok"
    except _ShapeChange as exc:
        return None, f"not defined: the block {exc}, so h_{{l+1}} = h_l is not a state of the model"
    finally:
        handle.remove()


def _reset(model, block, init_state, unavailable, x, y) -> tuple[float | None, str]:
    """The accuracy with ``block`` at its entries of ``init_state`` (keyed as ``model``'s, or the adapted
    model's inner one); the trained weights copied back after."""
    if init_state is None:
        return None, f"not available: {unavailable}"
    trained = {k: v.detach().clone() for k, v in block.state_dict().items()}
    for root in [model] + ([model.model] if isinstance(getattr(model, "model", None), nn.Module) else []):
        prefix = next((name for name, module in root.named_modules() if module is block), None)
        initial = {k: init_state.get(f"{prefix}.{k}") for k in trained}
        if prefix and all(isinstance(v, torch.Tensor) and v.shape == trained[k].shape for k, v in initial.items()):
            break
    else:
        return None, ("not available: init_state has no entry of the right shape for every weight of block "
                      f"{type(block).__name__}")
    try:
        block.load_state_dict(initial)
        return interface.accuracy(model, x, y), "ok"
    finally:
        block.load_state_dict(trained)
