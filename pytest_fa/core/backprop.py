"""Is autograd on a model backprop? A method living in the backward between the states and the logits
(custom ``autograd.Function`` nodes, backward or tensor hooks, feedback weights) would be compared
with itself: :class:`BackpropCheck` refuses it; a true-backprop twin (:func:`bp_twin`) gives the reference."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import BackwardCFunction
from torch.nn.modules import module as torch_module
from torch.nn.modules._functions import BackwardHookFunction, SyncBatchNorm
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import CheckpointFunction

from pytest_fa.core.adapter import HookedModel, _inputs, _reaching, _Splice
from pytest_fa.core.interface import state_name
from pytest_fa.errors import ModelInterfaceError, NotBackpropError, setting

FEEDBACK_NAMES = ("weight_backward", "bias_backward", "backward_weight", "weight_feedback", "feedback_weight",
                  "feedback", "B")
"""Names of a feedback weight kept beside a layer's ``weight`` (biotorch: ``weight_backward``)."""

# functions passing exact gradients (a module's hook function: its hooks are judged on the module)
_EXACT_FUNCTIONS = (_Splice, CheckpointFunction, SyncBatchNorm, BackwardHookFunction)

_BACKPROP: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # models checked: autograd is backprop


def non_backprop_parts(model: nn.Module, logits: torch.Tensor, states: Sequence[torch.Tensor], *,
                       outputs: Sequence[tuple[nn.Module, Any]] | None = None,
                       tensor_hooks: Sequence[tuple[Any, torch.Tensor]] = ()) -> list[str]:
    """Where autograd from ``logits`` down to ``states`` can differ from backprop (empty: it is
    backprop). ``outputs``: ``(module, grad_fn of its output)`` of the pass (None: every module
    is between); ``tensor_hooks``: ``(grad_fn, tensor)`` of each ``Tensor.register_hook``."""
    between = _between(logits.grad_fn, states) if logits.grad_fn is not None else set()
    root = model.model if isinstance(model, HookedModel) else model  # paths as the user names them
    names = {m: repr(n) if n else "the model" for n, m in root.named_modules()}
    if root is not model:
        names[model] = "the adapted model"
    owner = {node: module for module, node in reversed(outputs or ())}  # hooks fire innermost first: it wins
    placed = set(names) if outputs is None else {m for m, node in outputs if node in between}
    reasons: dict[nn.Module, list[str]] = {}
    loose: list[str] = []
    for node in between:
        cls = getattr(type(node), "_forward_cls", None)
        if isinstance(node, BackwardCFunction) and cls is not None and not issubclass(cls, _EXACT_FUNCTIONS):
            what = f"a custom autograd.Function {_qualified(cls)}"
            if node in owner:
                reasons.setdefault(owner[node], []).append(what)
            else:
                loose.append(what)
    # a pre-hook acts on the gradient at a module's output: it matters above a state the module writes
    pre_hooked = {owner.get(n) for node in between if getattr(type(node), "_forward_cls", None) is BackwardHookFunction
                  for n in _inputs(node)}
    for module in [*placed, *(m for m in pre_hooked if m is not None and m._backward_pre_hooks)]:
        if module._backward_hooks or module._backward_pre_hooks:
            reasons.setdefault(module, []).append("a backward hook")
        feedback = feedback_weight(module)
        if feedback:
            reasons.setdefault(module, []).append(f"a feedback weight `{feedback}` beside `weight`")
    order = {m: i for i, m in enumerate(names)}
    groups: dict[tuple, list[str]] = {}  # modules of one type with the same reasons, in module order
    for module, why in sorted(reasons.items(), key=lambda item: order.get(item[0], len(order))):
        groups.setdefault((type(module), *dict.fromkeys(why)), []).append(names.get(module, "a module"))
    parts = [f"{', '.join(paths[:3])}{f' and {len(paths) - 3} more modules' if len(paths) > 3 else ''} "
             f"({_qualified(cls)}): {', '.join(why)}" for (cls, *why), paths in groups.items()]
    parts += sorted(set(loose))
    if torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks:
        parts.append("a global module backward hook (torch.nn.modules.module.register_module_*backward*_hook)")
    parts += [f"a tensor hook on {state_name(model, i)}" for i, h in enumerate(states) if h._backward_hooks]
    if logits._backward_hooks:
        parts.append("a tensor hook on the logits")
    for node, tensor in tensor_hooks:
        if node is not None and node in between and not any(tensor is h for h in [*states, logits]):
            where = f" in {names.get(owner[node], 'a module')}" if node in owner else ""
            parts.append(f"a tensor hook on the output of {node.name()}{where}")
    return list(dict.fromkeys(parts))


def feedback_weight(module: nn.Module) -> str | None:
    """The name of a feedback weight ``module`` keeps beside its ``weight`` (None: none)."""
    own = {n for n, _ in module.named_parameters(recurse=False)} | {n for n, _ in module.named_buffers(recurse=False)}
    return next((n for n in FEEDBACK_NAMES if n in own), None) if "weight" in own else None


def _between(top: Any, states: Sequence[torch.Tensor]) -> set:
    """The autograd nodes on a path from ``top`` down to a state, above it (they compute a ``g_l``)."""
    targets = {h.grad_fn for h in states if h.grad_fn is not None}
    leaves = [h for h in states if h.grad_fn is None]
    reach = _reaching(top, lambda n: n in targets or any(getattr(n, "variable", None) is h for h in leaves), stop=False)
    return {node for node in reach if _inputs(node) & reach}


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


class BackpropCheck(TorchFunctionMode):
    """Watch one forward pass of ``model`` (``with``), then :meth:`verify` that autograd from its logits
    to its states is backprop; a model that passed once is not watched again (its structure is checked)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.active = model not in _BACKPROP
        self.outputs: list[tuple[nn.Module, Any]] = []
        self.tensor_hooks: list[tuple[Any, torch.Tensor]] = []  # (grad_fn, tensor) of each Tensor.register_hook
        self._handles: list = []

    def __enter__(self) -> BackpropCheck:
        if self.active:
            self._handles = [m.register_forward_hook(self._record(m)) for m in self.model.modules()]
            super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handles:  # model.modules() holds the model itself: watched iff there are handles
            super().__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.Tensor.register_hook and args:
            self.tensor_hooks.append((args[0].grad_fn, args[0]))
        return func(*args, **(kwargs or {}))

    def _record(self, module: nn.Module):
        def hook(mod: nn.Module, args: tuple, output: Any) -> None:
            values = list(output.values()) if isinstance(output, dict) else output
            values = values if isinstance(values, (tuple, list)) else [values]
            self.outputs.extend((module, t.grad_fn) for t in values
                                if isinstance(t, torch.Tensor) and t.grad_fn is not None)

        return hook

    def verify(self, logits: torch.Tensor, states: Sequence[torch.Tensor]) -> None:
        """Raise :class:`NotBackpropError` naming where the backward is not backprop."""
        if not self.active:
            return
        parts = non_backprop_parts(self.model, logits, states, outputs=self.outputs, tensor_hooks=self.tensor_hooks)
        self.outputs, self.tensor_hooks = [], []
        if parts:
            raise NotBackpropError(refusal(self.model, parts))
        _BACKPROP[self.model] = True


def refusal(model: nn.Module, parts: Sequence[str]) -> str:
    """The message of a refused model: where its backward is not backprop, and the ways forward."""
    root = model.model if isinstance(model, HookedModel) else model
    shown = "; ".join(parts[:3]) + (f"; and {len(parts) - 3} more" if len(parts) > 3 else "")
    return (
        f"autograd on {type(root).__name__} is not backprop, so its gradient cannot be the reference "
        f"g_l = dCE/dh_l (it would compare the method with itself): between the states and the logits "
        f"its backward passes through {shown}. Give a model that backpropagates truly with the same weights as "
        f"the reference ({setting('reference_model')}; pytest_fa.core.backprop:bp_twin builds one for "
        f"biotorch models), and take the method's credit from its own backward "
        f"({setting('credit', 'own-backward')}, OwnBackwardCredit)"
    )


def check_twin(model: nn.Module, forward: tuple[torch.Tensor, Sequence[torch.Tensor]],
               twin_forward: tuple[torch.Tensor, Sequence[torch.Tensor]]) -> None:
    """Refuse a reference model whose logits or states differ from ``model``'s on the same batch
    by more than ``sqrt(eps)`` of the dtype, relative to the largest entry."""
    (logits, states), (twin_logits, twin_states) = forward, twin_forward
    if len(twin_states) != len(states):
        raise NotBackpropError(
            f"the reference model returns {len(twin_states)} states, the model {len(states)}; a reference "
            "model is a twin of the model: the same forward pass, states and weights"
        )
    pairs = [(state_name(model, i), h, t) for i, (h, t) in enumerate(zip(states, twin_states))]
    for name, ours, theirs in [*pairs, ("the logits", logits, twin_logits)]:
        ours, theirs = ours.detach(), theirs.detach()
        if ours.shape != theirs.shape:
            raise NotBackpropError(
                f"the reference model's {name} has shape {tuple(theirs.shape)}, the model's "
                f"{tuple(ours.shape)}; a reference model is a twin of the model: the same forward pass"
            )
        difference = float((ours - theirs.to(ours)).abs().max())
        tolerance = torch.finfo(ours.dtype).eps ** 0.5 * float(ours.abs().max())
        if not difference <= tolerance:
            raise NotBackpropError(
                f"the reference model is not a twin of the model: at {name} the two differ by up to {difference:.3g} "
                f"(tolerance {tolerance:.3g}); a reference model computes the same forward pass with the "
                "same weights and backpropagates truly (for biotorch models, bp_twin(model) builds one)"
            )


# -- biotorch ----------------------------------------------------------------------------------
# biotorch is no dependency: its classes are recognised by the module they are defined in.

def _is_biotorch(module: nn.Module) -> bool:
    return type(module).__module__.startswith("biotorch.")


def _is_bio_wrapper(module: nn.Module) -> bool:
    return _is_biotorch(module) and type(module).__name__ == "BioModule"


class Unwrapped(nn.Module):
    """A biotorch ``BioModule``'s network called as it is, ``module(x)``: the wrapper of a
    twin, so its module paths (``module.…``) stay those of the original."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> Any:
        return self.module(x)


def bp_twin(model: nn.Module) -> nn.Module:
    """A copy of a biotorch model that backpropagates truly with the same weights: each layer
    back to its ``torch.nn`` layer, each ``BioModule`` to :class:`Unwrapped`."""
    if isinstance(model, HookedModel):
        paths = {m: n for n, m in model.model.named_modules()}
        return HookedModel(
            bp_twin(model.model), model.patterns, block_output=model.block_output, pooling=model.pooling,
            norm=paths.get(model.out_ln), head=paths.get(model.out_head), logits=model._logits,
        )
    twin = copy.deepcopy(model)
    converted = 0
    if _is_bio_wrapper(twin):
        twin, converted = Unwrapped(twin.module), 1
    for parent in list(twin.modules()):
        for name, child in list(parent._modules.items()):
            plain = _plain_layer(child) if child is not None else None
            if plain is not None:
                parent._modules[name] = plain
                converted += 1
    if not converted:
        raise ModelInterfaceError(
            f"bp_twin: {type(model).__name__} has no biotorch layer to convert; write its twin yourself "
            "(the same forward pass and weights in plain torch layers) and pass it as the reference model"
        )
    return twin


def _plain_layer(layer: nn.Module) -> nn.Module | None:
    """The ``torch.nn`` layer a biotorch layer converted, on its forward weights (None: not one)."""
    if not _is_biotorch(layer):
        return None
    if _is_bio_wrapper(layer):
        return Unwrapped(layer.module)
    if isinstance(layer, nn.Conv2d):
        plain = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                          layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, device="meta")
    elif isinstance(layer, nn.Linear):
        plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, device="meta")
    else:
        return None
    plain.weight = nn.Parameter(layer.weight.detach(), requires_grad=layer.weight.requires_grad)
    if layer.bias is not None:
        plain.bias = nn.Parameter(layer.bias.detach(), requires_grad=layer.bias.requires_grad)
    return plain.train(layer.training)


@contextmanager
def training_loss_gradient(model: nn.Module, logits: torch.Tensor, y: torch.Tensor) -> Iterator[None]:
    """While open, the layers of each biotorch DFA ``BioModule`` hold this batch's ``dCE/dlogits``
    as ``loss_gradient`` (their backward hooks read it), as its training forward sets it."""
    wrappers = [m for m in model.modules() if _is_bio_wrapper(m) and getattr(m, "mode", None) == "dfa"]
    if not wrappers:
        yield
        return
    _check_measured(model, wrappers, logits)
    (gradient,) = torch.autograd.grad(F.cross_entropy(logits, y), logits, retain_graph=True)
    layers = [layer for wrapper in wrappers for layer in wrapper.module.modules()]
    saved = [(layer, layer.__dict__.get("loss_gradient", _MISSING)) for layer in layers]
    try:
        for layer in layers:
            layer.loss_gradient = gradient
        yield
    finally:
        for layer, value in saved:
            if value is _MISSING:
                layer.__dict__.pop("loss_gradient", None)
            else:
                layer.loss_gradient = value


_MISSING = object()


def _check_measured(model: nn.Module, wrappers: Sequence[nn.Module], logits: torch.Tensor) -> None:
    """The DFA layers that get the loss gradient are those the logits were computed with."""
    for wrapper in wrappers:
        if wrapper.output_dim != logits.shape[-1]:
            raise ModelInterfaceError(
                f"the biotorch DFA model broadcasts a loss gradient of {wrapper.output_dim} outputs, but the "
                f"logits have {logits.shape[-1]}; its output must be the logits"
            )
    top = logits.grad_fn  # the nodes reaching a weight, the weights' own nodes included
    reach = _reaching(top, lambda node: hasattr(node, "variable"), stop=False) if top is not None else set()
    used = {id(node.variable) for node in reach if hasattr(node, "variable")}
    weights = [m.weight for w in wrappers for m in w.module.modules() if feedback_weight(m)]
    if weights and not any(id(w) in used for w in weights):
        raise ModelInterfaceError(
            f"the credit was built on another {type(model).__name__} than the one measured (a copy?), or its "
            "weights do not require grad: build OwnBackwardCredit on the model you diagnose"
        )
