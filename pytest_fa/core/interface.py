"""The duck-typed model contract the protocol reads, and checks that it holds::

    logits, hiddens = model(x, return_hidden=True)   # hiddens = [h_0, ..., h_L]
    model.embed  or model.patch_embed                  # writes h_0
    model.blocks                                       # block l returns f_l(h_l), not h_l + f_l(h_l)
    model.out_ln + model.out_head  or  model.norm + model.head

A sample of a state is read as the model's ``hidden_layout`` (a name, or a method of ``h``) or the
rank of ``h`` says (:data:`LAYOUTS`, :func:`per_sample`). Other models are adapted with :func:`pytest_fa.adapt`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from pytest_fa.errors import ModelInterfaceError, setting

if TYPE_CHECKING:
    import torch
    from torch import nn

LAYOUTS = ("vector", "tokens", "tokens_mean", "tokens_all", "spatial")
BLOCK_OUTPUTS = ("auto", "sum", "branch")  # what an adapted model's blocks return (pytest_fa.adapt)
POOLINGS = ("cls", "mean", "all")  # how an adapted model's token states are read
POOLING_LAYOUTS = {"cls": "tokens", "mean": "tokens_mean", "all": "tokens_all"}


_OR_ADAPT = ("; or name the modules that write h_0 … h_L without renaming anything: "
             "pytest_fa.adapt(model, ['embed', 'blocks.*']), your modules' names in place of these")


def embedding(model: nn.Module) -> nn.Module:
    """The module that writes ``h_0``."""
    for name in ("embed", "patch_embed"):
        module = getattr(model, name, None)
        if module is not None:
            return module
    raise ModelInterfaceError(
        f"{type(model).__name__} has neither `embed` nor `patch_embed`; expose the module "
        "that produces h_0 under one of those names" + _OR_ADAPT
    )


def blocks(model: nn.Module) -> Any:
    """The residual blocks ``f_0 … f_{L-1}``."""
    found = getattr(model, "blocks", None)
    if found is None:
        raise ModelInterfaceError(
            f"{type(model).__name__} has no `blocks`; expose the residual blocks as an "
            "nn.ModuleList whose elements return the residual branch f_l(h_l)" + _OR_ADAPT
        )
    return found


def readout(model: nn.Module) -> tuple[nn.Module | None, nn.Module]:
    """``(terminal norm or None, head)``: what maps ``h_L`` to the logits."""
    for norm_name, head_name in (("out_ln", "out_head"), ("norm", "head")):
        head = getattr(model, head_name, None)
        if head is not None:
            return getattr(model, norm_name, None), head
    raise ModelInterfaceError(
        f"{type(model).__name__} has neither `out_head` nor `head`; expose the classifier "
        "as `out_head` (with `out_ln`) or `head` (with `norm`)" + _OR_ADAPT
    )


def readout_logits(model: nn.Module, h_L: torch.Tensor) -> torch.Tensor:
    """Logits from a final hidden state: ``model.read_logits`` if defined, else ``head(norm(h))``."""
    read = getattr(model, "read_logits", None)
    if read is not None:
        return read(h_L)
    norm, head = readout(model)
    return head(norm(h_L) if norm is not None else h_L)


def has_terminal_norm(model: nn.Module) -> bool:
    """True when a normalisation layer sits between ``h_L`` and the head."""
    from torch import nn

    norm, _ = readout(model)
    return norm is not None and not isinstance(norm, nn.Identity)


def hidden_layout(model: nn.Module, h: torch.Tensor) -> str:
    """How to read one sample of ``h``: declared by ``model.hidden_layout`` or by rank."""
    declared = getattr(model, "hidden_layout", None)
    if callable(declared):
        declared = declared(h)
    if declared is not None:
        if declared not in LAYOUTS:
            raise ModelInterfaceError(
                f"{type(model).__name__}.hidden_layout = {declared!r}; use one of {LAYOUTS}"
            )
        return declared
    return {2: "vector", 3: "tokens_all"}.get(h.dim(), "spatial")


def per_sample(h: torch.Tensor, layout: str) -> torch.Tensor:
    """``(B, features)`` view of a hidden state or its gradient under ``layout``."""
    if layout in ("tokens", "tokens_all"):
        return h[:, 0, :]
    if layout == "tokens_mean":
        return h.mean(dim=1)
    return h.reshape(h.shape[0], -1)


def norm_rows(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The rows whose norms give ``‖h_l‖`` and ``‖g_l‖``: :func:`per_sample`, but under ``"tokens_all"``
    all tokens ``(B, T·d)``, so an explosion confined to a few tokens still grows ``‖h_l‖``."""
    if layout == "tokens_all":
        return t.reshape(t.shape[0], -1)
    return per_sample(t, layout)


def _no_return_hidden(model: nn.Module) -> ModelInterfaceError:
    return ModelInterfaceError(
        f"{type(model).__name__}.forward does not accept `return_hidden`; adapt it without a "
        "rewrite, naming the modules that write h_0 ... h_L: pytest_fa.adapt(model, ['embed', "
        f"'blocks.*']) or {setting('hidden', repr('embed,blocks.*'))} (or add `return_hidden=False` and return "
        "`(logits, [h_0, ..., h_L])` when it is True)"
    )


def _accepts_return_hidden(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes ``return_hidden`` (or ``**kwargs``)."""
    import inspect

    try:
        parameters = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == "return_hidden" or p.kind is p.VAR_KEYWORD for p in parameters)


def forward_hidden(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``model(x, return_hidden=True)`` with the result checked against the contract."""
    try:
        out = model(x, return_hidden=True)
    except TypeError as exc:
        if "return_hidden" not in str(exc):
            raise
        raise _no_return_hidden(model) from exc
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise ModelInterfaceError(
            f"{type(model).__name__}(x, return_hidden=True) returned {type(out).__name__}; "
            "it must return `(logits, [h_0, ..., h_L])`"
        )
    logits, hiddens = out[0], list(out[1])
    n_blocks = len(blocks(model))
    if len(hiddens) != n_blocks + 1:
        raise ModelInterfaceError(
            f"{type(model).__name__} returned {len(hiddens)} hidden states for {n_blocks} blocks; "
            "expected L + 1 = [h_0 (embedding output), h_1, ..., h_L]"
        )
    return logits, hiddens


def state_name(model: nn.Module, index: int) -> str:
    """``h_index``, with the module that writes it when the model names its states."""
    names = getattr(model, "state_names", None)
    return f"h_{index} ({names[index]!r})" if names and index < len(names) else f"h_{index}"


def check_interface(model: nn.Module) -> None:
    """Raise :class:`ModelInterfaceError` naming the first missing piece of the contract."""
    if not _accepts_return_hidden(model):
        raise _no_return_hidden(model)
    embedding(model)
    blocks(model)
    if getattr(model, "read_logits", None) is None:
        readout(model)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode for a ``with`` block; every submodule's own mode restored after."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 4096) -> float:
    """Top-1 accuracy in eval mode, in chunks; each submodule's own mode is restored after, also on an error."""
    import torch

    correct = 0
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(x), chunk):
            correct += int((model(x[start : start + chunk]).argmax(-1) == y[start : start + chunk]).sum())
    return correct / len(x)


def block_weights(model: nn.Module, modules: Sequence[nn.Module] | None = None) -> list[torch.nn.Parameter]:
    """Parameters of the blocks (``modules``, by default :func:`blocks`) but their normalisation
    layers': what the frozen-blocks baseline holds at their initial values."""
    from torch import nn

    norm_types = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm)
    return [p for block in (blocks(model) if modules is None else modules) for module in block.modules()
            if not isinstance(module, norm_types) for p in module.parameters(recurse=False)]
