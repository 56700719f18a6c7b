"""What every rule of :mod:`pytest_fa.lint` shares: the walk, its dataflow, reporting.

Names are resolved through the file's imports (``import torch.nn.functional as F``,
``from torch.linalg import norm``); the usual ``torch``/``F``/``nn`` work in snippets that do not
import them.

"Gradient-like": an expression that mentions a name or attribute containing ``grad``
(case-insensitive: ``p.grad``, ``grads[l]``, ``g_grad``, ``torch.autograd.grad(...)``; not the
autograd switches ``requires_grad(_)``, ``no_grad``, ``enable_grad``, ``set_grad_enabled``,
``zero_grad``, ``grad_fn``, ...), or a variable (or ``self.<attr>``) assigned one earlier in the
same scope (sticky: it stays gradient-like after later assignments). A function sees the
enclosing scope's gradient-like names except its own parameters; batch origins never cross
function boundaries.

Batch origins are computed by forward dataflow over the assignments of the function (the
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

The rules live in :mod:`pytest_fa.lint.rules`, one module each, each a :class:`Rule` with its
hooks. The walk calls ``on_call`` on every call, ``on_cosine`` on every cosine
(:meth:`Linter.cosine`) and ``on_wrap`` on the ``with`` items and the decorators of a function
together with the body they wrap. A finding is (line, 0-based character column of the called
name, code, message).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["EMPTY", "Cosine", "Env", "Linter", "Origin", "Rule", "has_splat", "keywords", "short"]

# ---------------------------------------------------------------------------------------------
# names
# ---------------------------------------------------------------------------------------------

# What the usual short names mean when a snippet uses them without importing them.
_DEFAULT_ALIASES = {"torch": "torch", "F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy", "math": "math"}

_COSINE_FUNCTIONS = {"torch.nn.functional.cosine_similarity", "torch.cosine_similarity"}
_COSINE_MODULES = {"torch.nn.CosineSimilarity", "torch.nn.modules.CosineSimilarity",
                   "torch.nn.modules.distance.CosineSimilarity"}
_INF_NAMES = {"math.inf", "torch.inf", "numpy.inf"}

# identifiers that contain "grad" but switch autograd on/off rather than hold a gradient
_GRAD_SWITCHES = {
    "requires_grad", "requires_grad_", "no_grad", "enable_grad", "set_grad_enabled",
    "is_grad_enabled", "zero_grad", "grad_fn", "retain_grad", "retains_grad", "grad_mode",
}
_MUTATORS = {"append", "extend", "insert", "add", "update", "appendleft", "extendleft"}
_MODEL_ITERATORS = {"parameters", "named_parameters", "buffers", "named_buffers", "modules",
                    "named_modules", "children", "named_children", "keys", "values", "items"}
_ITER_WRAPPERS = {"iter", "enumerate", "zip", "list", "tuple", "tqdm", "islice", "cycle", "sorted", "reversed"}
_BATCH_SEGMENTS = {"data", "dl", "ds", "it", "iter", "loader", "loaders", "dataset", "datasets", "batches"}


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
    return "grad" in low and low not in _GRAD_SWITCHES


def _segments(identifier: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", identifier)
    return [s for s in spaced.lower().split("_") if s]


def _batchish(identifier: str) -> bool:
    """A name for a source of batches: ``loader``, ``train_dl``, ``eval_batches``, ``data_iter``."""
    low = identifier.lower()
    return "batch" in low or "loader" in low or any(s in _BATCH_SEGMENTS for s in _segments(identifier))


def _batch_list(identifier: str) -> bool:
    """A list of batches that ``[0]`` and ``[1]`` index: ``batches``, ``eval_batches``, ``batch_list``."""
    low = identifier.lower()
    return "batches" in low or "batch_list" in low or "batchlist" in low


def short(node: ast.AST, limit: int = 60) -> str:
    """The source of ``node`` for a message, cut to ``limit`` characters."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def keywords(call: ast.Call) -> dict[str, ast.expr]:
    """The named keyword arguments of a call (``**kwargs`` left out)."""
    return {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}


def has_splat(call: ast.Call) -> bool:
    """Whether a ``*args`` or ``**kwargs`` may carry arguments this call does not show."""
    return any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)


# ---------------------------------------------------------------------------------------------
# batch origins and the environment of a scope
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


class Cosine(NamedTuple):
    """A cosine call: what to call it in a message, its two vectors, whether eps is given (None:
    eps does not apply, as for ``pytest_fa.core.diagnostics.cosine_per_sample``)."""

    what: str
    args: list[ast.expr]
    eps: bool | None


# ---------------------------------------------------------------------------------------------
# rules
# ---------------------------------------------------------------------------------------------

CallHook = Callable[["Linter", ast.Call, Env], None]
CosineHook = Callable[["Linter", ast.Call, Cosine, Env], None]
WrapHook = Callable[["Linter", list[ast.expr], list[ast.stmt], str], None]


@dataclass(frozen=True)
class Rule:
    """One lint code and the hooks the walk calls for it.

    ``on_call(linter, call, env)`` runs on every call; ``on_cosine(linter, call, cosine, env)``
    on every cosine; ``on_wrap(linter, contexts, body, form)`` on the items of a ``with`` (form
    ``"with "``) and on the decorators of a function (form ``"@"``), with the statements they wrap.
    """

    code: str
    on_call: CallHook | None = None
    on_cosine: CosineHook | None = None
    on_wrap: WrapHook | None = None


# ---------------------------------------------------------------------------------------------
# the walk
# ---------------------------------------------------------------------------------------------


class Linter:
    """One walk over one module: the dataflow of each scope, and the rules' hooks on the way."""

    def __init__(self, tree: ast.Module, lines: list[str], rules: tuple[Rule, ...]) -> None:
        self.lines = lines
        self.aliases = dict(_DEFAULT_ALIASES)
        self._collect_aliases(tree)
        self.found: dict[tuple[int, int, str], str] = {}  # (line, col, code) -> message
        self.tree = tree
        self._call_hooks = [rule.on_call for rule in rules if rule.on_call is not None]
        self._cosine_hooks = [rule.on_cosine for rule in rules if rule.on_cosine is not None]
        self._wrap_hooks = [rule.on_wrap for rule in rules if rule.on_wrap is not None]

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

    def is_number(self, node: ast.AST) -> bool:
        """A numeric literal: ``-1``, ``2.0``, ``float("inf")``, ``math.inf``."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return self.is_number(node.operand)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
                and len(node.args) == 1 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            return True
        return self.qualname(node) in _INF_NAMES

    # -- reporting --------------------------------------------------------------------------

    def _char_col(self, line: int, byte_offset: int) -> int:
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        return len(text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace"))

    def report(self, code: str, node: ast.AST, message: str) -> None:
        """A finding at ``node`` (at the called name, for a method call); an expression visited
        twice is reported once."""
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute) and func.end_lineno is not None:
            line = func.end_lineno
            col = self._char_col(line, func.end_col_offset - len(func.attr))
        else:
            line, col = node.lineno, self._char_col(node.lineno, node.col_offset)
        self.found.setdefault((line, col, code), message)

    # -- gradient-likeness and batch origins ------------------------------------------------

    def grad_like(self, node: ast.AST, env: Env) -> str | None:
        """The fragment that makes ``node`` gradient-like, or None."""
        for sub in ast.walk(node):
            if isinstance(sub, ast.Name):
                if _gradish(sub.id) or sub.id in env.taint:
                    return sub.id
            elif isinstance(sub, ast.Attribute):
                if _gradish(sub.attr):
                    return short(sub)
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
                    and inner.func.attr in _MODEL_ITERATORS)

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
               and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in _ITER_WRAPPERS - {"zip"}):
            node = node.args[0]
        source = _dotted(node)
        if source is not None and source not in env.shuffled:
            return ("for", source)
        return ("for", iterable.lineno, iterable.col_offset)

    def origins(self, node: ast.AST | None, env: Env) -> frozenset[Origin]:
        """The batches the value of ``node`` comes from (empty: unknown)."""
        if node is None:
            return EMPTY
        if isinstance(node, ast.Name):
            return env.origins.get(node.id, EMPTY)
        if isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            own = env.origins.get(dotted, EMPTY) if dotted else EMPTY
            return own | self.origins(node.value, env)
        if isinstance(node, ast.Call) and self._is_next(node):
            here = Origin(self._next_key(node, env), f"`{short(node)}` at line {node.lineno}")
            return frozenset({here}) | self._children_origins(node, env)
        if isinstance(node, ast.Subscript):
            inner = self.origins(node.value, env)
            dotted = _dotted(node.value)
            index = node.slice
            if (not inner and dotted is not None and _batch_list(dotted.split(".")[-1])
                    and isinstance(index, (ast.Constant, ast.UnaryOp)) and self.is_number(index)):
                value = ast.literal_eval(index)
                return frozenset({Origin(("index", dotted, value), f"`{dotted}[{value}]`")})
            return inner | self.origins(index, env)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner_env = env.copy()
            for gen in node.generators:
                self._bind_loop(gen.target, gen.iter, inner_env, replace=True)
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

    def _bind(self, target: ast.AST, value: ast.AST | None, env: Env, replace: bool,
              extra: frozenset[Origin] = EMPTY) -> None:
        if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
                and len(target.elts) == len(value.elts)
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts))):
            for t, v in zip(target.elts, value.elts):
                self._bind(t, v, env, replace, extra)
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

    def _bind_loop(self, target: ast.AST, iterable: ast.AST, env: Env, replace: bool,
                   extra: frozenset[Origin] | None = None) -> None:
        """``for target in iterable``: each target holds an element of (its part of) the
        iterable; iterating over a source of batches with no known origin starts a new batch."""
        if extra is None:
            extra = EMPTY
            if not self.origins(iterable, env) and self._batch_source(iterable):
                extra = frozenset({Origin(self._loop_key(iterable, env),
                                          f"the loop over `{short(iterable)}` at line {iterable.lineno}")})
        func = iterable.func if isinstance(iterable, ast.Call) else None
        name = func.id if isinstance(func, ast.Name) else None
        if isinstance(target, (ast.Tuple, ast.List)) and name in ("zip", "enumerate") and not has_splat(iterable):
            if name == "zip" and len(target.elts) == len(iterable.args):
                for t, v in zip(target.elts, iterable.args):
                    self._bind_loop(t, v, env, replace, extra)
                return
            if name == "enumerate" and len(target.elts) == 2 and iterable.args:
                self._bind(target.elts[0], None, env, replace, extra)
                self._bind_loop(target.elts[1], iterable.args[0], env, replace, extra)
                return
        self._bind(target, iterable, env, replace, extra)

    def _batch_source(self, iterable: ast.AST) -> bool:
        node = iterable
        while isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if name == "range" or name in _MODEL_ITERATORS:
                return False
            if name in _ITER_WRAPPERS and node.args:
                if name == "zip":
                    return any(self._batch_source(a) for a in node.args)
                node = node.args[0]
                continue
            break
        return any(_batchish(identifier) for identifier in _identifiers(node))

    # -- cosines ----------------------------------------------------------------------------

    def _cosine_module_ctor(self, call: ast.Call) -> bool | None:
        """eps-given for ``nn.CosineSimilarity(...)``, None for any other call."""
        if self.qualname(call.func) not in _COSINE_MODULES:
            return None
        return "eps" in keywords(call) or len(call.args) >= 2 or has_splat(call)

    def _is_cosine_per_sample(self, name: str | None) -> bool:
        return name is not None and (name == "pytest_fa.core.diagnostics.cosine_per_sample"
                                     or name.endswith(".diagnostics.cosine_per_sample"))

    def cosine(self, call: ast.Call, env: Env) -> Cosine | None:
        """The cosine this call computes, or None: ``F.cosine_similarity``/``torch.cosine_similarity``,
        an ``nn.CosineSimilarity`` (inline, a variable or a ``self.<attr>``), or
        ``pytest_fa.core.diagnostics.cosine_per_sample``."""
        name = self.qualname(call.func)
        kwargs = keywords(call)
        args = [a for a in call.args[:2] if not isinstance(a, ast.Starred)]
        args += [kwargs[k] for k in ("x1", "x2") if k in kwargs]
        if name in _COSINE_FUNCTIONS:
            eps = "eps" in kwargs or len(call.args) >= 4 or has_splat(call)
            return Cosine(short(call.func), args, eps)
        if isinstance(call.func, ast.Call):
            eps = self._cosine_module_ctor(call.func)
            if eps is not None:
                return Cosine(short(call.func), args, eps)
        dotted = _dotted(call.func)
        if dotted is not None and dotted in env.cosine_modules:
            return Cosine(f"{dotted} (an nn.CosineSimilarity)", args, env.cosine_modules[dotted])
        if self._is_cosine_per_sample(name):
            a = [x for x in call.args[:2] if not isinstance(x, ast.Starred)]
            a += [kwargs[k] for k in ("a", "g") if k in kwargs]
            return Cosine(short(call.func), a, None)
        return None

    # -- the rules' hooks -------------------------------------------------------------------

    def _call(self, call: ast.Call, env: Env) -> None:
        for hook in self._call_hooks:
            hook(self, call, env)
        if self._cosine_hooks:
            found = self.cosine(call, env)
            if found is not None:
                for cosine_hook in self._cosine_hooks:
                    cosine_hook(self, call, found, env)

    def _wrap(self, contexts: list[ast.expr], body: list[ast.stmt], form: str) -> None:
        for hook in self._wrap_hooks:
            hook(self, contexts, body, form)

    # -- walking ----------------------------------------------------------------------------

    def _expr(self, node: ast.AST, env: Env) -> None:
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            inner = env.copy()
            for gen in node.generators:
                self._expr(gen.iter, inner)
                self._bind_loop(gen.target, gen.iter, inner, replace=True)
                for cond in gen.ifs:
                    self._expr(cond, inner)
            for part in ([node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]):
                self._expr(part, inner)
            return
        if isinstance(node, ast.Lambda):
            for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
                self._expr(default, env)
            inner = env.copy()
            inner.forget(_params(node.args))
            self._expr(node.body, inner)
            return
        if isinstance(node, ast.NamedExpr):
            self._expr(node.value, env)
            self._bind(node.target, node.value, env, replace=False)
            return
        if isinstance(node, ast.Call):
            self._call(node, env)
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in _MUTATORS:
                dotted = _dotted(func.value)
                if dotted is not None:
                    for arg in node.args:
                        self._set(env, dotted, self.origins(arg, env), self.grad_like(arg, env) is not None,
                                  replace=False)
        for child in ast.iter_child_nodes(node):
            self._expr(child, env)

    def _block(self, statements: list[ast.stmt], env: Env, conditional: bool) -> None:
        for statement in statements:
            self._stmt(statement, env, conditional)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | None, body: list[ast.stmt], env: Env) -> None:
        inner = env.copy()
        inner.origins = {}  # batches are tracked within one function
        if node is not None:
            inner.forget(_params(node.args))
        self._block(body, inner, conditional=False)

    def _stmt(self, node: ast.stmt, env: Env, conditional: bool) -> None:
        replace = not conditional
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
                self._expr(sub, env)
            self._wrap(node.decorator_list, node.body, "@")
            self._function(node, node.body, env)
        elif isinstance(node, ast.ClassDef):
            for sub in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
                self._expr(sub, env)
            inner = env.copy()
            modules, tainted = self._class_attributes(node)
            inner.cosine_modules.update(modules)
            inner.taint |= tainted
            self._block(node.body, inner, conditional=False)
        elif isinstance(node, ast.Assign):
            self._expr(node.value, env)
            for target in node.targets:
                self._expr(target, env)
                self._bind(target, node.value, env, replace)
        elif isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self._expr(node.value, env)
                self._bind(node.target, node.value, env, replace)
        elif isinstance(node, ast.AugAssign):
            self._expr(node.value, env)
            self._expr(node.target, env)
            self._bind(node.target, node.value, env, replace=False)
        elif isinstance(node, (ast.For, ast.AsyncFor)):
            self._expr(node.iter, env)
            self._bind_loop(node.target, node.iter, env, replace)
            self._block(node.body, env, conditional)
            self._block(node.orelse, env, True)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                self._expr(item.context_expr, env)
                if item.optional_vars is not None:
                    self._bind(item.optional_vars, item.context_expr, env, replace)
            self._wrap([item.context_expr for item in node.items], node.body, "with ")
            self._block(node.body, env, conditional)
        elif isinstance(node, (ast.While, ast.If)):
            self._expr(node.test, env)
            self._block(node.body, env, True)
            self._block(node.orelse, env, True)
        elif isinstance(node, ast.Try) or type(node).__name__ == "TryStar":
            self._block(node.body, env, True)
            for handler in node.handlers:
                self._block(handler.body, env, True)
            self._block(node.orelse, env, True)
            self._block(node.finalbody, env, True)
        elif type(node).__name__ == "Match":
            self._expr(node.subject, env)
            for case in node.cases:
                if case.guard is not None:
                    self._expr(case.guard, env)
                self._block(case.body, env, True)
        else:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    self._expr(child, env)

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

    def run(self) -> list[tuple[int, int, str, str]]:
        """Walk the module: its findings as (line, column, code, message)."""
        self._function(None, self.tree.body, Env())
        return [(line, col, code, message) for (line, col, code), message in self.found.items()]
