"""Any residual model, no rewrite: ``pytest_fa.adapt(vit, ["encoder.dropout", "encoder.layers.*"])``
reads the named states with forward hooks inside ``model(x, return_hidden=True)``. The first module
writes ``h_0``, each later one, a block, ``h + f(h)`` (``"sum"``) or the branch ``f(h)`` its parent
adds (``"branch"``); the first forward pass refuses states that are not one residual stream."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from pytest_fa.errors import ModelInterfaceError, setting
from pytest_fa.core.interface import BLOCK_OUTPUTS, POOLING_LAYOUTS, POOLINGS, eval_mode


def match_path(pattern: str, path: str) -> bool:
    """Whether dotted ``path`` matches ``pattern`` segment by segment (``**``: any segments)."""

    def match(pat: list[str], parts: list[str]) -> bool:
        if not pat:
            return not parts
        if pat[0] == "**":
            return any(match(pat[1:], parts[i:]) for i in range(len(parts) + 1))
        return bool(parts) and fnmatch.fnmatchcase(parts[0], pat[0]) and match(pat[1:], parts[1:])

    return match(pattern.split("."), path.split(".") if path else [])


def resolve_states(model: nn.Module, patterns: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """The ``(name, module)`` pairs the patterns name, in order, each module once."""
    named = [(name, module) for name, module in model.named_modules() if name]
    chosen: dict[str, nn.Module] = {}
    for pattern in patterns:
        hits = [(n, m) for n, m in named if match_path(pattern, n)]
        if not hits:
            near = [n for n, _ in named if "." not in n][:12]
            raise ModelInterfaceError(
                f"state pattern {pattern!r} matches no module of {type(model).__name__}; "
                f"its top-level modules are {near} (a pattern is matched one dotted segment at "
                "a time: 'blocks.*' names blocks.0, blocks.1, …; '**' spans segments)"
            )
        for name, module in hits:
            chosen.setdefault(name, module)
    if len(chosen) < 2:
        raise ModelInterfaceError(
            f"the patterns {list(patterns)} name {len(chosen)} module(s); the protocol needs h_0 "
            "and at least one block: name the module that writes h_0 and the residual blocks"
        )
    return list(chosen.items())


_NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.batchnorm._NormBase)
_NORM_NAME = re.compile(r"(RMS|Layer|Batch|Group|Instance)Norm(\dd)?$")  # nn.RMSNorm, LlamaRMSNorm, T5LayerNorm, …


class _Splice(torch.autograd.Function):
    """Forward: the branch output, copied. Backward: its gradient to the branch *and* to
    ``h_next``, a leaf holding ``h_{l+1}`` (so ``dCE/dh_next = dCE/dh_{l+1}`` exactly)."""

    @staticmethod
    def forward(ctx, branch: torch.Tensor, h_next: torch.Tensor) -> torch.Tensor:
        return branch.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, grad


class HookedModel(nn.Module):
    """A model whose residual stream is read through forward hooks on named modules, speaking
    the duck-typed contract of :mod:`pytest_fa.core.interface`."""

    def __init__(self, model: nn.Module, states: str | Sequence[str], *, block_output: str = "auto",
                 pooling: str = "all", norm: str | None = None, head: str | None = None,
                 logits: Callable[[Any], torch.Tensor] | None = None) -> None:
        super().__init__()
        for option, value, allowed in (("block_output", block_output, BLOCK_OUTPUTS), ("pooling", pooling, POOLINGS)):
            if value not in allowed:
                raise ModelInterfaceError(f"{option}={value!r}: use one of {', '.join(allowed)}")
        self.model = model
        parts = states.split(",") if isinstance(states, str) else [p for s in states for p in str(s).split(",")]
        self.patterns = [p.strip() for p in parts if p.strip()]  # "embed, blocks.*" or ["embed", "blocks.*"]
        if not self.patterns:
            raise ModelInterfaceError("no states named: give module paths or patterns such as 'embed, blocks.*'")
        self._states = resolve_states(model, self.patterns)
        for name, module in self._states[1:]:  # a block is never a norm (h_0 may be an embedding ending in one)
            if isinstance(module, _NORM_TYPES) or _NORM_NAME.search(type(module).__name__):
                raise ModelInterfaceError(
                    f"state {name!r} is a {type(module).__name__}, a normalisation layer, not a residual "
                    f"block: it rescales the stream instead of adding a branch to it, and a state read "
                    f"after the terminal norm hides a collapsed gradient. If it is the terminal norm, "
                    f"leave it out of the states (h_L is its input; on the command line, out of "
                    f"{setting('hidden')}) and name it as the norm: adapt(..., norm={name!r})"
                )
        self.block_output = block_output
        self.pooling = pooling
        modules = dict(model.named_modules())
        for role, path in (("norm", norm), ("head", head)):
            if path and path not in modules:
                raise ModelInterfaceError(f"{role}={path!r} is not a module of {type(model).__name__}")
        # a tuple, so the readout is not registered a second time beside self.model
        self._readout = (modules[norm] if norm else None, modules[head] if head else None)
        self._logits = logits
        self._record: list[dict[str, Any]] | None = None
        self._mode: str | None = None if block_output == "auto" else block_output
        self._chain_checked = False

    @property
    def state_names(self) -> list[str]:
        return [name for name, _ in self._states]

    @property
    def embed(self) -> nn.Module:
        return self._states[0][1]

    @property
    def blocks(self) -> list[nn.Module]:
        return [module for _, module in self._states[1:]]

    @property
    def out_ln(self) -> nn.Module | None:
        return self._readout[0]

    @property
    def out_head(self) -> nn.Module | None:
        return self._readout[1]

    def hidden_layout(self, h: torch.Tensor) -> str:
        """By rank; token states ``(B, T, d)`` as ``pooling`` says (:data:`POOLING_LAYOUTS`)."""
        return {2: "vector", 3: POOLING_LAYOUTS[self.pooling]}.get(h.dim(), "spatial")

    def read_logits(self, h_L: torch.Tensor) -> torch.Tensor:
        norm, head = self._readout
        if head is None:
            raise ModelInterfaceError(
                "this measurement maps h_L to the logits directly; name the classifier with "
                "adapt(..., head='name') (and the terminal norm with norm='name')"
            )
        return head(norm(h_L) if norm is not None else h_L)

    def forward(self, x: torch.Tensor, return_hidden: bool = False):
        if not return_hidden:
            out = self.model(x)
            return out if self._logits is None else self._read_logits(out)
        if not self._chain_checked:  # the chain is the model's structure: read it once, on the first batch,
            # in a graph rooted at h_0 and in eval mode (no running statistics updated, no random numbers drawn)
            with torch.enable_grad(), eval_mode(self.model):
                logits, record = self._capture(x, "sum")
            _check_record(record, self.state_names, len(x))
            self._mode = _check_chain(record, self.state_names, self.block_output)
            _check_residual(record, logits, self.state_names, self._mode)
            self._chain_checked = True
        logits, record = self._capture(x, self._mode)
        _check_record(record, self.state_names, len(x))
        return logits, [entry["state"] for entry in record]

    def _capture(self, x: torch.Tensor, mode: str):
        # hooks live only for this call: a copy of the wrapper (deepcopy) never shares them
        self._record, self._capture_mode = [], mode
        handles = [module.register_forward_hook(self._hook(i)) for i, (_, module) in enumerate(self._states)]
        try:
            out = self.model(x)
        finally:
            for handle in handles:
                handle.remove()
            record, self._record = self._record, None
        return self._read_logits(out), record

    def _read_logits(self, out: Any) -> torch.Tensor:
        if self._logits is not None:
            out = self._logits(out)
        if not isinstance(out, torch.Tensor):
            raise ModelInterfaceError(
                f"{type(self.model).__name__} returned {type(out).__name__}, not a logits tensor; "
                "pass adapt(..., logits=lambda out: out.logits) to say where the logits are"
            )
        return out

    def _hook(self, index: int):
        def hook(module: nn.Module, args: tuple, output: Any):
            name = self._states[index][0]
            if not isinstance(output, torch.Tensor):
                raise ModelInterfaceError(
                    f"state module {name!r} returns {type(output).__name__}, not a tensor; name the "
                    "module whose output is the residual stream itself"
                )
            if not self._chain_checked and index == 0 and output.is_floating_point():
                output = output.detach().requires_grad_().clone()  # the check's graph starts at h_0
            given = args[0] if args and isinstance(args[0], torch.Tensor) else None
            entry = {"index": index, "input": given, "output": output, "state": output,
                     "nodes": (getattr(given, "grad_fn", None), output.grad_fn)}
            if self._capture_mode == "branch" and index > 0:
                if given is None or given.shape != output.shape:
                    raise ModelInterfaceError(
                        f"block {name!r} returns shape {tuple(output.shape)} from input "
                        f"{None if given is None else tuple(given.shape)}; a block returning its "
                        "branch f(h) must keep the shape of h (use block_output='sum')"
                    )
                state = (given.detach() + output.detach()).requires_grad_(output.requires_grad)
                entry["state"] = state
                output = _Splice.apply(output, state) if output.requires_grad else output
            entry["version"] = entry["state"]._version
            self._record.append(entry)
            return output

        return hook


def adapt(model: nn.Module, states: str | Sequence[str], **options: Any) -> HookedModel:
    """Wrap ``model`` so the protocol reads the residual stream at the named ``states``. Options:
    ``block_output`` (``"auto"``, ``"sum"``, ``"branch"``), ``pooling`` of token states (``"all"``, ``"cls"``,
    ``"mean"``), ``norm`` and ``head`` (module paths), ``logits`` (picks the logits out of the output)."""
    if isinstance(model, HookedModel):
        raise ModelInterfaceError("the model is adapted already; adapt the model it wraps")
    return HookedModel(model, states, **options)


def _link(before: dict[str, Any], after: dict[str, Any]) -> str:
    """How block ``after`` reads the state block ``before`` wrote: sum, branch or neither."""
    given, out, into = after["input"], before["output"], before["input"]
    if _same(given, out):
        return "sum"
    if into is not None and out.shape == into.shape and _same(given, into + out):
        return "branch"
    return "neither"


def _same(a: torch.Tensor | None, b: torch.Tensor) -> bool:
    return a is not None and (a is b or (a.shape == b.shape and bool(torch.equal(a, b))))


def _check_record(record: list[dict[str, Any]], names: list[str], batch: int) -> None:
    """Every call: each state ran once, in order, batch first, and was not overwritten."""
    ran = [names[entry["index"]] for entry in record]
    if ran != names:
        missing = [n for n in names if n not in ran]
        twice = sorted({n for n in ran if ran.count(n) > 1})
        problem = (
            f"{missing} did not run" if missing else f"{twice} ran more than once" if twice
            else f"they ran in the order {ran}"
        )
        hint = (
            " (a module the forward pass runs as `layer.forward(x)` bypasses the forward hooks that read "
            "it: call the module, `layer(x)`)" if missing else ""
        )
        raise ModelInterfaceError(
            f"the forward pass must run each named state module once, in order {names}; {problem}{hint}. "
            "Name modules on the forward path, each used once, in the order the stream passes them"
        )
    for entry in record:
        name, state = names[entry["index"]], entry["state"]
        if state.dim() < 2 or state.shape[0] != batch:
            raise ModelInterfaceError(
                f"state {name!r} has shape {tuple(state.shape)} for a batch of {batch}; states must "
                "be (B, d), (B, T, d) or (B, C, H, W) with the batch first"
            )
        if state._version != entry["version"]:
            raise ModelInterfaceError(
                f"the output of {name!r} was overwritten in place later in the forward pass (an "
                "inplace=True activation?); name a module whose output is kept, or make it out of place"
            )


def _check_chain(record: list[dict[str, Any]], names: list[str], mode: str) -> str:
    """Once: the first block reads h_0, and each block's input is the previous block's output
    (``"sum"``) or its input plus output (``"branch"``), as ``mode`` says; the mode."""
    if not _same(record[1]["input"], record[0]["output"]):
        raise ModelInterfaceError(
            f"the input of the first block {names[1]!r} is not the output of {names[0]!r}: name the "
            "module that writes h_0, the state the first block reads"
        )
    if len(record) < 3:
        if mode != "auto":
            return mode
        raise ModelInterfaceError(
            f"with one block ({names[1]!r}) the forward pass cannot tell whether it returns h + f(h) "
            "or f(h): set block_output='sum' or 'branch'"
        )
    modes = {_link(before, after) for before, after in zip(record[1:], record[2:])}
    if len(modes) != 1 or "neither" in modes:
        raise ModelInterfaceError(
            f"the named states {names} are not one residual stream: the input of each block should be "
            "the output of the block before (blocks returning h + f(h)) or that block's input plus its "
            "output (blocks returning f(h)); name the modules whose outputs are consecutive states"
        )
    found = modes.pop()
    if mode not in ("auto", found):
        shown = {"sum": "h + f(h)", "branch": "f(h)"}
        raise ModelInterfaceError(
            f"block_output={mode!r}, but the forward pass shows blocks returning {shown[found]}: "
            f"set block_output={found!r} or 'auto'"
        )
    return found


def _check_residual(record: list[dict[str, Any]], logits: torch.Tensor, names: list[str], mode: str) -> None:
    """Each ``h_{l+1}`` is an addition joining two paths from ``h_l`` (blocks off the graph are
    left to the reference pass)."""
    for entry in record[1:]:
        into, out = entry["nodes"]
        if into is None or out is None:
            continue
        if mode == "sum":
            reach = _reaching(out, lambda n: n is into)
            joined = any(len(_inputs(n) & reach) >= 2 for n in reach if type(n).__name__ == "AddBackward0")
        else:
            top = logits.grad_fn
            through = _reaching(top, lambda n: n is out) if top is not None else set()
            if top not in through:
                continue
            around = _reaching(top, lambda n: n is into, avoid=out)
            joined = any(
                a is not b for n in through if type(n).__name__ == "AddBackward0"
                for a in _inputs(n) & through for b in _inputs(n) & around
            )
        if not joined:
            name = names[entry["index"]]
            where = ("its forward returns no sum h + f(h)" if mode == "sum"
                     else "its output f(h) is never added to its input h")
            raise ModelInterfaceError(
                f"block {name!r} is not a residual block: {where}, so its output is not h_l plus "
                f"a branch. Name modules of one residual stream: blocks returning h + f(h), or "
                f"f(h) that their parent adds to h; leave out layers that transform the stream "
                f"(a plain layer, the terminal norm, the head)"
            )


def _inputs(node: Any) -> set:
    return {n for n, _ in node.next_functions if n is not None}


def _reaching(root: Any, target: Callable[[Any], bool], avoid: Any = None, stop: bool = True) -> set:
    """The autograd nodes below ``root`` (itself included) from which a node ``target`` accepts is
    reached, not through ``avoid``; with ``stop`` the walk ends at such a node."""
    reach: dict[Any, bool] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if done:
            reach[node] = any(reach[n] for n in _inputs(node)) or (not stop and target(node))
        elif node not in reach:
            if node is avoid or (stop and target(node)):
                reach[node] = node is not avoid
                continue
            stack.append((node, True))
            stack.extend((n, False) for n in _inputs(node) if n not in reach)
    return {n for n, hit in reach.items() if hit}
