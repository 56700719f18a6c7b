"""Static checker for the source-level evaluation pitfalls (``--fa-lint`` / ``python -m pytest_fa.lint``).

Pure functions over the ``ast`` of a file; torch is never imported. Names are resolved through
the file's imports (``import torch.nn.functional as F``, ``from torch.linalg import norm``); the
usual ``torch``/``F``/``nn`` work in snippets that do not import them.

``FA001`` (pitfall 1): a number in the order slot and no ``dim``.
    ``t.norm(N)`` (``Tensor.norm(p, dim, ...)``) and ``torch.norm(x, N)`` /
    ``torch.linalg.norm(x, N)`` / ``torch.linalg.vector_norm(x, N)`` (order second, dim third),
    where N is a numeric literal (``-1``, ``2``, ``1.0``, ``float("inf")``, ``math.inf``) and no
    dim is given (neither positionally nor as ``dim=``): that is the norm of the whole flattened
    tensor. Not flagged: ``p=``/``ord=`` as keywords, any dim given, a non-literal order,
    ``**kwargs``, ``matrix_norm`` (its default dim is the last two), a ``.norm`` on an imported
    module (``np.linalg.norm``) or called with a tensor (``self.norm(h)``, a LayerNorm).
``FA002`` (pitfall 2): an eps-clamped cosine of a gradient.
    ``torch.nn.functional.cosine_similarity`` / ``torch.cosine_similarity`` without ``eps=``
    (nor a 4th positional argument, nor ``**kwargs``), and calls of an ``nn.CosineSimilarity``
    built without eps (inline ``nn.CosineSimilarity(dim=1)(a, g)``, a variable, or a
    ``self.<attr>`` assigned in any method of the class), where ``x1`` or ``x2`` is gradient-like.
``FA003`` (pitfall 3): float16 gradients.
    ``.half()``, ``.to(..., torch.float16 | torch.half, ...)``, ``.to(dtype=...)``,
    ``.type(torch.HalfTensor | torch.cuda.HalfTensor | "torch.HalfTensor")`` on a gradient-like
    receiver; and a float16 autocast (``torch.autocast``/``torch.amp.autocast`` with
    ``dtype=torch.float16``, or on a literal ``"cuda"`` device without dtype;
    ``torch.cuda.amp.autocast`` unless another dtype is given; never with ``enabled=False``) used
    as ``with`` or as a decorator whose body calls ``torch.autograd.grad``/``torch.autograd.backward``
    or ``.backward(...)`` (not inside nested functions, nor under a nested non-fp16 autocast).
``FA004`` (pitfall B3): a cosine across batches.
    For any cosine above or ``pytest_fa.diagnostics.cosine_per_sample``, the "batch origins" of
    both arguments are computed by forward dataflow over the assignments of the function (the
    module body counts as one function): a ``for`` loop (or comprehension) over a batch source —
    an iterable with no origin of its own whose names look like one (``*batch*``, ``*loader*``,
    ``data``, ``dl``, ``ds``, ``it``, ``iter`` segments), never ``range(...)`` nor
    ``.parameters()``-like iterators — gives its targets one origin; loops over the same named
    source share it unless that source was built with ``shuffle=True``. ``next(it)`` is a new
    origin at every call site; ``next(iter(X))`` is "the first batch of X" (one origin per X)
    unless X shuffles. ``batches[0]`` vs ``batches[1]`` (a name containing ``batches``, a
    constant index) are two origins. Origins flow through every expression (calls, attributes,
    subscripts, ``zip``/``enumerate`` unpacking, ``.append``); an assignment replaces a
    variable's origins in straight-line code and adds to them under ``if``/``try``/``while``.
    Flagged when both origin sets are non-empty and disjoint; silent whenever either is unknown.

"Gradient-like": an expression that mentions a name or attribute containing ``grad``
(case-insensitive: ``p.grad``, ``grads[l]``, ``g_grad``, ``torch.autograd.grad(...)``; not the
autograd switches ``requires_grad(_)``, ``no_grad``, ``enable_grad``, ``set_grad_enabled``,
``zero_grad``, ``grad_fn``, ...), or a variable (or ``self.<attr>``) assigned one earlier in the
same scope (sticky: it stays gradient-like after later assignments). A function sees the
enclosing scope's gradient-like names except its own parameters; batch origins never cross
function boundaries.

A line whose comment ends with ``fa-lint: ignore`` (all codes) or ``fa-lint: ignore[FA001,FA002]``
suppresses the findings on it (the reported line, or the first/last line of a multi-line call).
Findings are ``path:line:col`` with 1-based character columns pointing at the called name.
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import re
import sys
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Finding", "RULES", "lint_source", "lint_file", "python_files", "main"]


@dataclass(frozen=True)
class Finding:
    """One pitfall at one place: ``path:line:col: code [pitfall id] message``."""

    path: str
    line: int
    col: int
    pitfall: str
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}: {self.code} [pitfall {self.pitfall}] {self.message}"


#: code -> pitfall id (see :data:`pytest_fa.pitfalls.PITFALLS`); FA000 is "the file does not parse".
RULES = {"FA000": "-", "FA001": "1", "FA002": "2", "FA003": "3", "FA004": "B3"}

# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------

# What the usual short names mean when a snippet uses them without importing them.
DEFAULT_ALIASES = {"torch": "torch", "F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy", "math": "math"}

# the order is the first argument after the tensor in every one of these
NORM_FUNCTIONS = {
    "torch.norm": "p",
    "torch.functional.norm": "p",
    "torch.Tensor.norm": "p",
    "torch.linalg.norm": "ord",
    "torch.linalg.vector_norm": "ord",
}
COSINE_FUNCTIONS = {"torch.nn.functional.cosine_similarity", "torch.cosine_similarity"}
COSINE_MODULES = {"torch.nn.CosineSimilarity", "torch.nn.modules.CosineSimilarity",
                  "torch.nn.modules.distance.CosineSimilarity"}
FP16_NAMES = {"torch.float16", "torch.half", "torch.HalfTensor", "torch.cuda.HalfTensor"}
FP16_STRINGS = {"torch.HalfTensor", "torch.cuda.HalfTensor"}
INF_NAMES = {"math.inf", "torch.inf", "numpy.inf"}
GRAD_CALLS = {"torch.autograd.grad", "torch.autograd.backward"}
AUTOCAST_CUDA_DEFAULT = {"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"}
AUTOCAST_FP16_DEFAULT = {"torch.cuda.amp.autocast", "torch.cuda.amp.autocast_mode.autocast"}
AUTOCAST_OTHER = {"torch.cpu.amp.autocast", "torch.cpu.amp.autocast_mode.autocast"}

# identifiers that contain "grad" but switch autograd on/off rather than hold a gradient
GRAD_SWITCHES = {
    "requires_grad", "requires_grad_", "no_grad", "enable_grad", "set_grad_enabled",
    "is_grad_enabled", "zero_grad", "grad_fn", "retain_grad", "retains_grad", "grad_mode",
}
MUTATORS = {"append", "extend", "insert", "add", "update", "appendleft", "extendleft"}
MODEL_ITERATORS = {"parameters", "named_parameters", "buffers", "named_buffers", "modules",
                   "named_modules", "children", "named_children", "keys", "values", "items"}
ITER_WRAPPERS = {"iter", "enumerate", "zip", "list", "tuple", "tqdm", "islice", "cycle", "sorted", "reversed"}
BATCH_SEGMENTS = {"data", "dl", "ds", "it", "iter", "loader", "loaders", "dataset", "datasets", "batches"}

SUPPRESS = re.compile(r"fa-lint:\s*ignore(?:\[([A-Za-z0-9_,\s]*)\])?\s*$")


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


def _identifiers(node: ast.AST) -> Iterator[str]:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            yield sub.id
        elif isinstance(sub, ast.Attribute):
            yield sub.attr


def _gradish(identifier: str) -> bool:
    low = identifier.lower()
    return "grad" in low and low not in GRAD_SWITCHES


def _segments(identifier: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", identifier)
    return [s for s in spaced.lower().split("_") if s]


def _batchish(identifier: str) -> bool:
    """A name for a source of batches: ``loader``, ``train_dl``, ``eval_batches``, ``data_iter``."""
    low = identifier.lower()
    return "batch" in low or "loader" in low or any(s in BATCH_SEGMENTS for s in _segments(identifier))


def _batch_list(identifier: str) -> bool:
    """A list of batches that ``[0]`` and ``[1]`` index: ``batches``, ``eval_batches``, ``batch_list``."""
    low = identifier.lower()
    return "batches" in low or "batch_list" in low or "batchlist" in low


def _short(node: ast.AST, limit: int = 60) -> str:
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kwargs(call: ast.Call) -> dict[str, ast.expr]:
    return {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}


def _has_splat(call: ast.Call) -> bool:
    return any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)


# ---------------------------------------------------------------------------------------------
# batch origins
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """Where a batch came from; equal keys are the same batch."""

    key: tuple
    description: str = field(compare=False)


EMPTY: frozenset[Origin] = frozenset()


@dataclass
class Env:
    """What is known about the variables of one scope (dotted names: ``g``, ``self.ref``)."""

    taint: set[str] = field(default_factory=set)  # gradient-like
    origins: dict[str, frozenset[Origin]] = field(default_factory=dict)
    cosine_modules: dict[str, bool] = field(default_factory=dict)  # name -> eps given
    shuffled: set[str] = field(default_factory=set)  # built with shuffle=True

    def copy(self) -> Env:
        return Env(set(self.taint), dict(self.origins), dict(self.cosine_modules), set(self.shuffled))

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.taint.discard(name)
            self.origins.pop(name, None)
            self.cosine_modules.pop(name, None)
            self.shuffled.discard(name)


def _params(args: ast.arguments) -> list[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
    every += [a for a in (args.vararg, args.kwarg) if a is not None]
    return [a.arg for a in every]


# ---------------------------------------------------------------------------------------------
# the checker
# ---------------------------------------------------------------------------------------------


class _Linter:
    def __init__(self, tree: ast.Module, source: str, path: str) -> None:
        self.path = path
        self.lines = source.splitlines()
        self.aliases = dict(DEFAULT_ALIASES)
        self._collect_aliases(tree)
        self.found: list[tuple[Finding, int, int]] = []  # finding, first line, last line of the node
        self._seen: set[tuple[str, int, int]] = set()
        self.tree = tree

    # -- names ------------------------------------------------------------------------------

    def _collect_aliases(self, tree: ast.Module) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        self.aliases[alias.asname] = alias.name
                    else:
                        top = alias.name.split(".")[0]
                        self.aliases[top] = top
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                for alias in node.names:
                    if alias.name != "*":
                        joined = base + alias.name if base.endswith(".") or not base else f"{base}.{alias.name}"
                        self.aliases[alias.asname or alias.name] = joined

    def qualname(self, node: ast.AST) -> str | None:
        """The imported object a ``Name``/``Attribute`` chain refers to, or None."""
        dotted = _dotted(node)
        if dotted is None:
            return None
        root, _, rest = dotted.partition(".")
        if root not in self.aliases:
            return None
        base = self.aliases[root]
        return f"{base}.{rest}" if rest else base

    def _is_number(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return self._is_number(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            return True
        return self.qualname(node) in INF_NAMES

    def _is_fp16(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value in FP16_STRINGS
        return self.qualname(node) in FP16_NAMES

    def _is_cosine_per_sample(self, name: str | None) -> bool:
        return name is not None and (name == "pytest_fa.diagnostics.cosine_per_sample"
                                     or name.endswith(".diagnostics.cosine_per_sample"))

    # -- reporting --------------------------------------------------------------------------

    def _char_col(self, line: int, byte_offset: int) -> int:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return len(text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")) + 1

    def report(self, code: str, node: ast.AST, message: str) -> None:
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.end_lineno is not None:
            line = func.end_lineno
            col = self._char_col(line, func.end_col_offset - len(func.attr))
        else:
            line, col = node.lineno, self._char_col(node.lineno, node.col_offset)
        if (code, line, col) in self._seen:  # an expression visited twice (e.g. re-evaluated)
            return
        self._seen.add((code, line, col))
        finding = Finding(self.path, line, col, RULES[code], code, message)
        self.found.append((finding, node.lineno, getattr(node, "end_lineno", None) or node.lineno))

    # -- gradient-likeness and batch origins ------------------------------------------------

    def grad_like(self, node: ast.AST, env: Env) -> str | None:
        """The fragment that makes ``node`` gradient-like, or None."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                if _gradish(sub.id) or sub.id in env.taint:
                    return sub.id
            elif isinstance(sub, ast.Attribute):
                if _gradish(sub.attr):
                    return _short(sub)
                dotted = _dotted(sub)
                if dotted is not None and dotted in env.taint:
                    return dotted
        return None

    def _is_next(self, call: ast.Call) -> bool:
        if not (isinstance(call.func, ast.Name) and call.func.id == "next" and call.args):
            return False
        # next(model.parameters()) / next(iter(model.buffers())) is not a batch
        inner = call.args[0]
        while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "iter" and inner.args:
            inner = inner.args[0]
        return not (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                    and inner.func.attr in MODEL_ITERATORS)

    def _next_key(self, call: ast.Call, env: Env) -> tuple:
        """``next(it)`` advances an iterator: every call site is another batch. ``next(iter(X))``
        starts afresh: the first batch of X again, unless X is known to shuffle."""
        arg = call.args[0]
        if (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "iter"
                and len(arg.args) == 1):
            source = _dotted(arg.args[0])
            if source is not None and source not in env.shuffled:
                return ("first", source)
        return ("next", call.lineno, call.col_offset)

    def _loop_key(self, iterable: ast.AST, env: Env) -> tuple:
        """Loops over the same named source visit the same batches in the same order (unless it
        shuffles); any other loop is a batch source of its own."""
        node = iterable
        while (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and node.args
               and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in ITER_WRAPPERS - {"zip"}):
            node = node.args[0]
        source = _dotted(node)
        if source is not None and source not in env.shuffled:
            return ("for", source)
        return ("for", iterable.lineno, iterable.col_offset)

    def origins(self, node: ast.AST | None, env: Env) -> frozenset[Origin]:
        if node is None:
            return EMPTY
        if isinstance(node, ast.Name):
            return env.origins.get(node.id, EMPTY)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            own = env.origins.get(dotted, EMPTY) if dotted else EMPTY
            return own | self.origins(node.value, env)
        if isinstance(node, ast.Call) and self._is_next(node):
            here = Origin(self._next_key(node, env), f"`{_short(node)}` at line {node.lineno}")
            return frozenset({here}) | self._children_origins(node, env)
        if isinstance(node, ast.Subscript):
            inner = self.origins(node.value, env)
            dotted = _dotted(node.value)
            index = node.slice
            if (not inner and dotted is not None and _batch_list(dotted.split(".")[-1])
                    and isinstance(index, (ast.Constant, ast.UnaryOp)) and self._is_number(index)):
                value = ast.literal_eval(index)
                return frozenset({Origin(("index", dotted, value), f"`{dotted}[{value}]`")})
            return inner | self.origins(index, env)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner_env = env.copy()
            for gen in node.generators:
                self.bind_loop(gen.target, gen.iter, inner_env, replace=True)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            out = EMPTY
            for part in parts:
                out |= self.origins(part, inner_env)
            return out
        if isinstance(node, ast.Lambda):
            inner_env = env.copy()
            inner_env.forget(_params(node.args))
            return self.origins(node.body, inner_env)
        return self._children_origins(node, env)

    def _children_origins(self, node: ast.AST, env: Env) -> frozenset[Origin]:
        out = EMPTY
        for child in ast.iter_child_nodes(node):
            out |= self.origins(child, env)
        return out

    # -- binding ----------------------------------------------------------------------------

    def _leaves(self, target: ast.AST) -> Iterator[tuple[str, bool]]:
        """(dotted name, replaceable) for each variable a target writes; a subscript or a
        starred target only adds to what the container holds."""
        if isinstance(target, (ast.Tuple, ast.List)):
            for elt in target.elts:
                yield from self._leaves(elt)
        elif isinstance(target, ast.Starred):
            for name, _ in self._leaves(target.value):
                yield name, False
        elif isinstance(target, ast.Subscript):
            dotted = _dotted(target.value)
            if dotted is not None:
                yield dotted, False
        else:
            dotted = _dotted(target)
            if dotted is not None:
                yield dotted, True

    def _set(self, env: Env, name: str, origins: frozenset[Origin], tainted: bool, replace: bool,
             cosine_eps: bool | None = None) -> None:
        env.origins[name] = origins if replace else env.origins.get(name, EMPTY) | origins
        if tainted:
            env.taint.add(name)  # sticky: once assigned a gradient, the name stays suspect
        if cosine_eps is not None:
            env.cosine_modules[name] = cosine_eps
        elif replace:
            env.cosine_modules.pop(name, None)

    def bind(self, target: ast.AST, value: ast.AST | None, env: Env, replace: bool,
             extra: frozenset[Origin] = EMPTY) -> None:
        if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
                and len(target.elts) == len(value.elts)
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts))):
            for t, v in zip(target.elts, value.elts):
                self.bind(t, v, env, replace, extra)
            return
        origins = (self.origins(value, env) if value is not None else EMPTY) | extra
        tainted = value is not None and self.grad_like(value, env) is not None
        cosine_eps = self._cosine_module_ctor(value) if isinstance(value, ast.Call) else None
        shuffles = isinstance(value, ast.Call) and any(
            kw.arg == "shuffle" and isinstance(kw.value, ast.Constant) and kw.value.value is True
            for kw in value.keywords)
        for name, replaceable in self._leaves(target):
            self._set(env, name, origins, tainted, replace and replaceable, cosine_eps)
            if shuffles:
                env.shuffled.add(name)
            elif replace and replaceable:
                env.shuffled.discard(name)

    def bind_loop(self, target: ast.AST, iterable: ast.AST, env: Env, replace: bool,
                  extra: frozenset[Origin] | None = None) -> None:
        """``for target in iterable``: each target holds an element of (its part of) the
        iterable; iterating over a source of batches with no known origin starts a new batch."""
        if extra is None:
            extra = EMPTY
            if not self.origins(iterable, env) and self._batch_source(iterable):
                extra = frozenset({Origin(self._loop_key(iterable, env),
                                          f"the loop over `{_short(iterable)}` at line {iterable.lineno}")})
        func = iterable.func if isinstance(iterable, ast.Call) else None
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(target, (ast.Tuple, ast.List)) and name in ("zip", "enumerate") and not _has_splat(iterable):
            if name == "zip" and len(target.elts) == len(iterable.args):
                for t, v in zip(target.elts, iterable.args):
                    self.bind_loop(t, v, env, replace, extra)
                return
            if name == "enumerate" and len(target.elts) == 2 and iterable.args:
                self.bind(target.elts[0], None, env, replace, extra)
                self.bind_loop(target.elts[1], iterable.args[0], env, replace, extra)
                return
        self.bind(target, iterable, env, replace, extra)

    def _batch_source(self, iterable: ast.AST) -> bool:
        node = iterable
        while isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name == "range" or name in MODEL_ITERATORS:
                return False
            if name in ITER_WRAPPERS and node.args:
                if name == "zip":
                    return any(self._batch_source(a) for a in node.args)
                node = node.args[0]
                continue
            break
        return any(_batchish(identifier) for identifier in _identifiers(node))

    # -- cosines ----------------------------------------------------------------------------

    def _cosine_module_ctor(self, call: ast.Call) -> bool | None:
        """eps-given for ``nn.CosineSimilarity(...)``, None for any other call."""
        if self.qualname(call.func) not in COSINE_MODULES:
            return None
        return "eps" in _kwargs(call) or len(call.args) >= 2 or _has_splat(call)

    def cosine(self, call: ast.Call, env: Env) -> tuple[str, list[ast.expr], bool | None] | None:
        """(what, [x1, x2], eps given or None when eps does not apply) for a cosine call."""
        name = self.qualname(call.func)
        kwargs = _kwargs(call)
        args = [a for a in call.args[:2] if not isinstance(a, ast.Starred)]
        args += [kwargs[k] for k in ("x1", "x2") if k in kwargs]
        if name in COSINE_FUNCTIONS:
            eps = "eps" in kwargs or len(call.args) >= 4 or _has_splat(call)
            return _short(call.func), args, eps
        if isinstance(call.func, ast.Call):
            eps = self._cosine_module_ctor(call.func)
            if eps is not None:
                return _short(call.func), args, eps
        dotted = _dotted(call.func)
        if dotted is not None and dotted in env.cosine_modules:
            return f"{dotted} (an nn.CosineSimilarity)", args, env.cosine_modules[dotted]
        if self._is_cosine_per_sample(name):
            a = [x for x in call.args[:2] if not isinstance(x, ast.Starred)]
            a += [kwargs[k] for k in ("a", "g") if k in kwargs]
            return _short(call.func), a, None
        return None

    # -- rules on one call ------------------------------------------------------------------

    def check_call(self, call: ast.Call, env: Env) -> None:
        self.check_norm(call)
        self.check_cast(call, env)
        found = self.cosine(call, env)
        if found is not None:
            what, args, eps = found
            if eps is False:
                self.check_cosine_eps(call, what, args, env)
            if len(args) == 2:
                self.check_batches(call, args, env)

    def check_norm(self, call: ast.Call) -> None:
        if _has_splat(call):
            return
        kwargs = _kwargs(call)
        func = call.func
        name = self.qualname(func)
        if name in NORM_FUNCTIONS:
            # f(input, p/ord, dim, ...): a number second with no dim is the norm of everything
            if len(call.args) == 2 and self._is_number(call.args[1]) and "dim" not in kwargs:
                tensor, order, word = call.args[0], call.args[1], NORM_FUNCTIONS[name]
                self.report("FA001", call, self._norm_message(ast.unparse(call), _short(tensor), order, word))
        elif isinstance(func, ast.Attribute) and func.attr == "norm" and self.qualname(func.value) is None:
            # tensor.norm(p, dim, ...)
            if len(call.args) == 1 and self._is_number(call.args[0]) and "dim" not in kwargs:
                self.report("FA001", call, self._norm_message(
                    _short(call, 70), _short(func.value), call.args[0], "p"))

    @staticmethod
    def _norm_message(text: str, tensor: str, order: ast.AST, word: str) -> str:
        value = ast.unparse(order)
        dim = value if value in ("-1", "0", "1", "-2") else "-1"
        looks_like_dim = f" ({value} reads like a dimension but is the order {word})" if dim == value else ""
        return (
            f"`{text}` passes {word}={value} positionally and no `dim`{looks_like_dim}: it is the "
            f"{word}={value} norm of the whole flattened tensor (one number for the batch), not a norm "
            f"along a dimension. Fix: `{tensor}.norm(dim={dim})` or `torch.linalg.vector_norm({tensor}, dim={dim})` "
            f"for per-sample norms; if the whole tensor is meant, pass `{word}={value}` as a keyword."
        )

    def check_cosine_eps(self, call: ast.Call, what: str, args: list[ast.expr], env: Env) -> None:
        for arg in args:
            fragment = self.grad_like(arg, env)
            if fragment is not None:
                shown = _short(arg, 40)
                why = f"`{shown}`" if fragment == shown else f"`{shown}` (gradient-like: `{fragment}`)"
                self.report("FA002", call, (
                    f"`{what}` on a gradient {why} without an explicit `eps=`: it divides by "
                    f"max(‖x‖, eps=1e-8), so once ‖g‖ < 1e-8 the 'cosine' shrinks by ‖g‖/eps and no "
                    f"longer measures direction. Fix: compute the cosine in float64 without an eps clamp "
                    f"and mark it undefined below the floor: `pytest_fa.diagnostics.cosine_per_sample(a, g)`."
                ))
                return

    def check_batches(self, call: ast.Call, args: list[ast.expr], env: Env) -> None:
        first, second = (self.origins(a, env) for a in args)
        if first and second and first.isdisjoint(second):
            def where(origins: frozenset[Origin]) -> str:
                return " and ".join(sorted(o.description for o in origins))

            self.report("FA004", call, (
                f"cosine between `{_short(args[0], 40)}` (from {where(first)}) and "
                f"`{_short(args[1], 40)}` (from {where(second)}): the two come from different batches, "
                f"so the number measures batch similarity, not credit quality. Fix: compute the credit "
                f"and the reference gradient on the same forward pass (same x, y)."
            ))

    def check_cast(self, call: ast.Call, env: Env) -> None:
        func = call.func
        if not isinstance(func, ast.Attribute) or self.qualname(func.value) is not None:
            return
        kwargs = _kwargs(call)
        if func.attr == "half" and not call.args:
            cast = "float16"
        elif func.attr == "to" and (any(self._is_fp16(a) for a in call.args)
                                    or ("dtype" in kwargs and self._is_fp16(kwargs["dtype"]))):
            cast = "float16"
        elif func.attr == "type" and ((call.args and self._is_fp16(call.args[0]))
                                      or ("dtype" in kwargs and self._is_fp16(kwargs["dtype"]))):
            cast = "float16"
        else:
            return
        fragment = self.grad_like(func.value, env)
        if fragment is None:
            return
        self.report("FA003", call, (
            f"`{_short(call)}` casts a gradient (`{fragment}`) to {cast}: float16's smallest subnormal is "
            f"6e-8, so hidden-layer BP gradients (~1e-9) flush to zero. Fix: keep reference gradients in "
            f"float32/float64 (or bfloat16, which has float32's exponent range)."
        ))

    def autocast_fp16(self, call: ast.AST) -> str | None:
        """Why this ``with`` item is a float16 autocast, or None (not one, or unsure)."""
        if not isinstance(call, ast.Call) or _has_splat(call):
            return None
        name = self.qualname(call.func)
        kwargs = _kwargs(call)
        enabled = kwargs.get("enabled")
        if isinstance(enabled, ast.Constant) and enabled.value is False:
            return None
        if name in AUTOCAST_CUDA_DEFAULT:
            dtype = kwargs.get("dtype", call.args[1] if len(call.args) > 1 else None)
            if dtype is not None:
                return "dtype=torch.float16" if self._is_fp16(dtype) else None
            device = kwargs.get("device_type", call.args[0] if call.args else None)
            if isinstance(device, ast.Constant) and isinstance(device.value, str) and device.value.split(":")[0] == "cuda":
                return "CUDA autocast defaults to float16"
            return None
        if name in AUTOCAST_FP16_DEFAULT:
            dtype = kwargs.get("dtype", call.args[1] if len(call.args) > 1 else None)
            if dtype is None:
                return "torch.cuda.amp.autocast defaults to float16"
            return "dtype=torch.float16" if self._is_fp16(dtype) else None
        if name in AUTOCAST_OTHER:
            dtype = kwargs.get("dtype", call.args[1] if len(call.args) > 1 else None)
            return "dtype=torch.float16" if dtype is not None and self._is_fp16(dtype) else None
        return None

    def _is_autocast(self, call: ast.AST) -> bool:
        return isinstance(call, ast.Call) and self.qualname(call.func) in (
            AUTOCAST_CUDA_DEFAULT | AUTOCAST_FP16_DEFAULT | AUTOCAST_OTHER)

    def gradient_call(self, nodes: list[ast.stmt]) -> ast.Call | None:
        """The first ``torch.autograd.grad(...)`` / ``.backward(...)`` these statements run under
        the enclosing autocast (not in nested functions, nor under a nested non-fp16 autocast)."""
        stack: list[ast.AST] = list(reversed(nodes))
        while stack:
            node = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                    self._is_autocast(i.context_expr) and self.autocast_fp16(i.context_expr) is None
                    for i in node.items):
                continue
            if isinstance(node, ast.Call):
                func = node.func
                if self.qualname(func) in GRAD_CALLS or (isinstance(func, ast.Attribute) and func.attr == "backward"
                                                         and self.qualname(func.value) is None):
                    return node
            stack.extend(reversed(list(ast.iter_child_nodes(node))))
        return None

    def check_autocast(self, contexts: list[ast.expr], body: list[ast.stmt], form: str) -> None:
        """``with <fp16 autocast>:`` (or ``@<fp16 autocast>`` on a function) around gradients."""
        for context in contexts:
            why = self.autocast_fp16(context)
            if why is None:
                continue
            grad = self.gradient_call(body)
            if grad is None:
                continue
            self.report("FA003", context, (
                f"`{form}{_short(context)}` ({why}) wraps a gradient computation "
                f"(`{_short(grad.func)}(...)` at line {grad.lineno}): float16's smallest subnormal is 6e-8, "
                f"so hidden-layer BP gradients (~1e-9) flush to zero. Fix: measure reference gradients in "
                f"float32/float64 (outside the autocast, or `enabled=False`) or with `dtype=torch.bfloat16`."
            ))

    # -- walking ----------------------------------------------------------------------------

    def expr(self, node: ast.AST, env: Env) -> None:
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = env.copy()
            for gen in node.generators:
                self.expr(gen.iter, inner)
                self.bind_loop(gen.target, gen.iter, inner, replace=True)
                for cond in gen.ifs:
                    self.expr(cond, inner)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self.expr(part, inner)
            return
        if isinstance(node, ast.Lambda):
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                self.expr(default, env)
            inner = env.copy()
            inner.forget(_params(node.args))
            self.expr(node.body, inner)
            return
        if isinstance(node, ast.NamedExpr):
            self.expr(node.value, env)
            self.bind(node.target, node.value, env, replace=False)
            return
        if isinstance(node, ast.Call):
            self.check_call(node, env)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in MUTATORS:
                dotted = _dotted(func.value)
                if dotted is not None:
                    for arg in node.args:
                        self._set(env, dotted, self.origins(arg, env), self.grad_like(arg, env) is not None,
                                  replace=False)
        for child in ast.iter_child_nodes(node):
            self.expr(child, env)

    def block(self, statements: list[ast.stmt], env: Env, conditional: bool) -> None:
        for statement in statements:
            self.stmt(statement, env, conditional)

    def function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | None, body: list[ast.stmt], env: Env) -> None:
        inner = env.copy()
        inner.origins = {}  # batches are tracked within one function
        if node is not None:
            inner.forget(_params(node.args))
        self.block(body, inner, conditional=False)

    def stmt(self, node: ast.stmt, env: Env, conditional: bool) -> None:
        replace = not conditional
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
                self.expr(sub, env)
            self.check_autocast(node.decorator_list, node.body, "@")
            self.function(node, node.body, env)
        elif isinstance(node, ast.ClassDef):
            for sub in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self.expr(sub, env)
            inner = env.copy()
            modules, tainted = self._class_attributes(node)
            inner.cosine_modules.update(modules)
            inner.taint |= tainted
            self.block(node.body, inner, conditional=False)
        elif isinstance(node, ast.Assign):
            self.expr(node.value, env)
            for target in node.targets:
                self.expr(target, env)
                self.bind(target, node.value, env, replace)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.expr(node.value, env)
                self.bind(node.target, node.value, env, replace)
        elif isinstance(node, ast.AugAssign):
            self.expr(node.value, env)
            self.expr(node.target, env)
            self.bind(node.target, node.value, env, replace=False)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self.expr(node.iter, env)
            self.bind_loop(node.target, node.iter, env, replace)
            self.block(node.body, env, conditional)
            self.block(node.orelse, env, True)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self.expr(item.context_expr, env)
                if item.optional_vars is not None:
                    self.bind(item.optional_vars, item.context_expr, env, replace)
            self.check_autocast([item.context_expr for item in node.items], node.body, "with ")
            self.block(node.body, env, conditional)
        elif isinstance(node, (ast.While, ast.If)):
            self.expr(node.test, env)
            self.block(node.body, env, True)
            self.block(node.orelse, env, True)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self.block(node.body, env, True)
            for handler in node.handlers:
                self.block(handler.body, env, True)
            self.block(node.orelse, env, True)
            self.block(node.finalbody, env, True)
        elif type(node).__name__ == "Match":
            self.expr(node.subject, env)
            for case in node.cases:
                if case.guard is not None:
                    self.expr(case.guard, env)
                self.block(case.body, env, True)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self.expr(child, env)

    def _class_attributes(self, node: ast.ClassDef) -> tuple[dict[str, bool], set[str]]:
        """What every method sees of ``self.<attr>``: the ``nn.CosineSimilarity`` modules (with
        eps given or not) and the attributes any method assigns a gradient-like value."""
        modules: dict[str, bool] = {}
        tainted: set[str] = set()
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Assign, ast.AnnAssign)) or sub.value is None:
                continue
            targets = sub.targets if isinstance(sub, ast.Assign) else [sub.target]
            eps = self._cosine_module_ctor(sub.value) if isinstance(sub.value, ast.Call) else None
            gradient = self.grad_like(sub.value, Env()) is not None
            for target in targets:
                for leaf in ast.walk(target):
                    dotted = _dotted(leaf) if isinstance(leaf, ast.Attribute) else None
                    if dotted is None or not dotted.startswith("self.") or dotted.count(".") != 1:
                        continue
                    if eps is not None:
                        modules[dotted] = eps
                    if gradient:
                        tainted.add(dotted)
        return modules, tainted

    def run(self) -> list[tuple[Finding, int, int]]:
        self.function(None, self.tree.body, Env())
        return self.found


# ---------------------------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------------------------


def _suppressions(source: str) -> dict[int, set[str] | None]:
    """line -> codes suppressed there (None: all)."""
    out: dict[int, set[str] | None] = {}
    if "fa-lint" not in source:  # fast path: tokenizing is the slowest step
        return out
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (tokenize.TokenError, SyntaxError):
        return out
    for token in tokens:
        if token.type != tokenize.COMMENT:
            continue
        match = SUPPRESS.search(token.string)
        if match is None:
            continue
        line = token.start[0]
        if match.group(1) is None:
            out[line] = None
        elif out.get(line, set()) is not None:
            codes = {c.strip().upper() for c in match.group(1).split(",") if c.strip()}
            out[line] = out.get(line, set()) | codes
    return out


def _suppressed(rules: dict[int, set[str] | None], lines: Iterable[int], code: str) -> bool:
    for line in lines:
        if line in rules and (rules[line] is None or code in rules[line]):
            return True
    return False


def lint_source(source: str, path: str = "<string>") -> list[Finding]:
    """Findings in ``source``, sorted by (line, col). A SyntaxError propagates: use :func:`lint_file`
    for files (it turns one into an FA000 finding)."""
    tree = ast.parse(source, filename=path)
    rules = _suppressions(source)
    try:
        found = _Linter(tree, source, path).run()
    except RecursionError:
        # the walk recurses once per level of the tree; ast.parse bounds that depth, so a
        # higher limit for this one deep file (a sum of thousands of terms) is safe
        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 100_000))
        try:
            found = _Linter(tree, source, path).run()
        finally:
            sys.setrecursionlimit(limit)
    kept = [
        finding
        for finding, first, last in found
        if not _suppressed(rules, {finding.line, first, last}, finding.code)
    ]
    return sorted(kept, key=lambda f: (f.line, f.col, f.code))


def lint_file(path: str | os.PathLike[str]) -> list[Finding]:
    """Findings in one file; a file that does not parse (or decode) is one FA000 finding."""
    raw = Path(path).read_bytes()
    name = str(path)
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        source = raw.decode(encoding)
        return lint_source(source, name)
    except SyntaxError as error:
        line, col = error.lineno or 1, error.offset or 1
        return [Finding(name, line, col, RULES["FA000"], "FA000",
                        f"cannot parse: {error.msg}; fix the syntax error so the file can be checked.")]
    except RecursionError:
        return [Finding(name, 1, 1, RULES["FA000"], "FA000",
                        "cannot parse: nested too deeply for Python's parser; split the expression.")]
    except (UnicodeDecodeError, LookupError, ValueError) as error:
        return [Finding(name, 1, 1, RULES["FA000"], "FA000",
                        f"cannot read as Python source: {error}; save it as UTF-8 (or declare its encoding).")]


def _skip_dir(path: Path) -> bool:
    name = path.name
    return (name.startswith(".") or name in ("__pycache__", "site-packages")
            or (path / "pyvenv.cfg").is_file())


def python_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The ``*.py`` files under ``paths`` (files named explicitly are taken as they are), sorted,
    without duplicates, skipping hidden folders, ``__pycache__``, virtual environments (a folder
    with ``pyvenv.cfg``) and ``site-packages``. A path that does not exist is a FileNotFoundError."""
    found: dict[Path, Path] = {}
    for raw in paths:
        root = Path(raw)
        if root.is_file():
            found.setdefault(root.resolve(), root)
            continue
        if not root.is_dir():
            raise FileNotFoundError(f"no such file or folder: {root}")
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not _skip_dir(here / d))
            for name in files:
                if name.endswith(".py") and not name.startswith("."):
                    file = here / name
                    found.setdefault(file.resolve(), file)
    return sorted(found.values())


def main(argv: list[str] | None = None) -> int:
    """``python -m pytest_fa.lint PATH...``: 0 clean, 1 findings, 2 usage error / missing path."""
    parser = argparse.ArgumentParser(
        prog="python -m pytest_fa.lint",
        description="Check Python sources for the source-level pitfalls of FA/DFA evaluations "
        "(FA001 norm(-1), FA002 cosine eps clamp, FA003 fp16 gradients, FA004 batch mismatch).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to check")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:
        return exit.code if isinstance(exit.code, int) else 2
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        for p in missing:
            print(f"fa-lint: error: no such file or folder: {p}", file=sys.stderr)
        return 2
    files = python_files(args.paths)
    findings = [f for file in files for f in lint_file(file)]
    for finding in findings:
        print(finding)
    dirty = len({f.path for f in findings})
    print(f"fa-lint: {len(findings)} finding(s) in {dirty} of {len(files)} file(s)", file=sys.stderr)
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
