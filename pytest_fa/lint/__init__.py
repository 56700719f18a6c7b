"""The source-level evaluation pitfalls as a flake8 plugin (``flake8 --select=FA,E9 src/`` or
``pytest --fa-lint=src/``): one walk over a file's ``ast``, torch never imported. Each code is the
``lint_code`` of its pitfall in :data:`pytest_fa.pitfalls.PITFALLS`:

- ``FA001``: a norm (``t.norm``, ``torch.norm``, ``torch.linalg.norm``/``vector_norm``) given a numeric literal
  as its positional order and no ``dim``: the norm of the whole flattened tensor.
- ``FA002``: a cosine (``F.cosine_similarity``, ``torch.cosine_similarity``, ``nn.CosineSimilarity``) with no
  ``eps`` given on a gradient-like argument.
- ``FA003``: a float16 cast of a gradient-like receiver, or a float16 autocast (``with`` or decorator) around
  ``torch.autograd.grad``/``backward`` or a ``.backward(...)``.
- ``FA004``: a cosine (``cosine_per_sample`` too) whose two arguments come from known batches that do not meet.

Gradient-like: mentions a name or attribute containing ``grad`` (not autograd switches such as ``requires_grad``),
or a variable assigned one earlier in the scope. Batch origins flow forward through one function's assignments:
a loop over a batch source (``loader``, ``batches``, ``dl``, ...) is one batch, shared by loops over the same
source unless it shuffles; each ``next(it)`` call site is a new batch; ``batches[0]`` and ``batches[1]`` are two.
An assignment replaces a variable's origins in straight-line code and adds to them under a branch.
``# noqa: FA00N`` on the finding's line silences it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

from pytest_fa.pitfalls import PITFALLS

__all__ = ["PITFALL", "Checker"]

#: lint code -> the id of its pitfall
PITFALL = {p.lint_code: p.id for p in PITFALLS if p.lint_code}

# what the usual short names mean in a snippet that does not import them
_DEFAULT_ALIASES = {"torch": "torch", "F": "torch.nn.functional", "nn": "torch.nn", "np": "numpy", "math": "math"}
# the norms whose order is the argument after the tensor -> the name of the order
_NORMS = {"torch.norm": "p", "torch.functional.norm": "p", "torch.Tensor.norm": "p",
          "torch.linalg.norm": "ord", "torch.linalg.vector_norm": "ord"}
_INF_NAMES = {"math.inf", "torch.inf", "numpy.inf"}
_COSINE_FUNCTIONS = {"torch.nn.functional.cosine_similarity", "torch.cosine_similarity"}
_COSINE_MODULES = {"torch.nn.CosineSimilarity", "torch.nn.modules.CosineSimilarity",
                   "torch.nn.modules.distance.CosineSimilarity"}
_FP16_NAMES = {"torch.float16", "torch.half", "torch.HalfTensor", "torch.cuda.HalfTensor"}
_FP16_STRINGS = {"torch.HalfTensor", "torch.cuda.HalfTensor"}
_GRAD_CALLS = {"torch.autograd.grad", "torch.autograd.backward"}
_AUTOCAST_CUDA_DEFAULT = {"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"}
_AUTOCAST_FP16_DEFAULT = {"torch.cuda.amp.autocast", "torch.cuda.amp.autocast_mode.autocast"}
_AUTOCASTS = _AUTOCAST_CUDA_DEFAULT | _AUTOCAST_FP16_DEFAULT | {"torch.cpu.amp.autocast",
                                                                "torch.cpu.amp.autocast_mode.autocast"}
_UNDERFLOW = "float16's smallest subnormal is 6e-8, so hidden-layer BP gradients (~1e-9) flush to zero."
# identifiers that contain "grad" but switch autograd on/off rather than hold a gradient
_GRAD_SWITCHES = {"requires_grad", "requires_grad_", "no_grad", "enable_grad", "set_grad_enabled",
                  "is_grad_enabled", "zero_grad", "grad_fn", "retain_grad", "retains_grad", "grad_mode"}
_MUTATORS = {"append", "extend", "insert", "add", "update", "appendleft", "extendleft"}
_MODEL_ITERATORS = {"parameters", "named_parameters", "buffers", "named_buffers", "modules",
                    "named_modules", "children", "named_children", "keys", "values", "items"}
# calls whose loop visits the elements of their first argument, in order
_ITER_WRAPPERS = {"iter", "enumerate", "list", "tuple", "tqdm", "islice", "cycle", "sorted", "reversed"}
_BATCH_SEGMENTS = {"data", "dl", "ds", "it", "iter", "loader", "loaders", "dataset", "datasets", "batches"}


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    return ".".join([node.id, *reversed(parts)]) if isinstance(node, ast.Name) else None


def _callee(node: ast.AST) -> str | None:
    """``f`` for ``f(...)`` and ``x.f(...)``, else None."""
    func = node.func if isinstance(node, ast.Call) else None
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _short(node: ast.AST, limit: int = 60) -> str:
    """The source of ``node`` for a message, cut to ``limit`` characters."""
    text = ast.unparse(node)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _has_splat(call: ast.Call) -> bool:
    """Whether a ``*args`` or ``**kwargs`` may carry arguments the call does not show."""
    return any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)


def _params(args: ast.arguments) -> set[str]:
    every = [*args.posonlyargs, *args.args, *args.kwonlyargs, args.vararg, args.kwarg]
    return {a.arg for a in every if a is not None}


def _grad_like(node: ast.AST, taint: set[str]) -> str | None:
    """The fragment that makes ``node`` gradient-like, or None."""
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Name, ast.Attribute)):
            word = (sub.id if isinstance(sub, ast.Name) else sub.attr).lower()
            if "grad" in word and word not in _GRAD_SWITCHES:
                return sub.id if isinstance(sub, ast.Name) else _short(sub)
            if _dotted(sub) in taint:
                return _dotted(sub)
    return None


def _unwrapped(node: ast.AST) -> ast.AST:
    """``loader`` for ``tqdm(enumerate(loader))``."""
    while _callee(node) in _ITER_WRAPPERS and node.args:
        node = node.args[0]
    return node


def _batch_source(node: ast.AST) -> bool:
    """A loop over ``node`` reads batches: ``loader``, ``zip(train_dl, x)``, ``tqdm(eval_batches)``."""
    node = _unwrapped(node)
    name = _callee(node)
    if name == "range" or name in _MODEL_ITERATORS:
        return False
    if name == "zip" and node.args:
        return any(_batch_source(a) for a in node.args)
    for sub in ast.walk(node):
        if isinstance(sub, (ast.Name, ast.Attribute)):
            word = sub.id if isinstance(sub, ast.Name) else sub.attr
            segments = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", word).lower().split("_")
            if "batch" in word.lower() or "loader" in word.lower() or _BATCH_SEGMENTS.intersection(segments):
                return True
    return False


def _leaves(target: ast.AST) -> Iterator[tuple[str, bool]]:
    """(dotted name, replaceable) for each variable a target writes; a subscript or a starred
    target only adds to what the container holds."""
    if isinstance(target, (ast.Tuple, ast.List)):
        for elt in target.elts:
            yield from _leaves(elt)
    elif isinstance(target, ast.Starred):
        yield from ((name, False) for name, _ in _leaves(target.value))
    elif isinstance(target, ast.Subscript):
        if _dotted(target.value) is not None:
            yield _dotted(target.value), False
    elif _dotted(target) is not None:
        yield _dotted(target), True


def _norm_message(text: str, tensor: ast.AST, order: ast.AST, word: str) -> str:
    value, tensor = ast.unparse(order), _short(tensor)
    dim = value if value in ("-1", "0", "1", "-2") else "-1"
    looks_like_dim = f" ({value} reads like a dimension but is the order {word})" if dim == value else ""
    return (
        f"`{text}` passes {word}={value} positionally and no `dim`{looks_like_dim}: it is the "
        f"{word}={value} norm of the whole flattened tensor (one number for the batch), not a norm "
        f"along a dimension. Fix: `{tensor}.norm(dim={dim})` or `torch.linalg.vector_norm({tensor}, dim={dim})` "
        f"for per-sample norms; if the whole tensor is meant, pass `{word}={value}` as a keyword."
    )


def _is_next(node: ast.AST) -> bool:
    """``next(...)`` of something other than ``model.parameters()``-like iterators."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "next" and node.args):
        return False
    inner = node.args[0]
    while isinstance(inner, ast.Call) and isinstance(inner.func, ast.Name) and inner.func.id == "iter" and inner.args:
        inner = inner.args[0]
    return not (isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute)
                and inner.func.attr in _MODEL_ITERATORS)


def _batch_key(kind: str, source: ast.AST | None, site: ast.AST, env: Env) -> tuple:
    """Reading a named ``source`` afresh (a loop over it, ``next(iter(X))``) gives the same batches
    each time unless it shuffles; any other read is a batch of its own at ``site``."""
    name = None if source is None else _dotted(source)
    return (kind, name) if name is not None and name not in env.shuffled else (kind, site.lineno, site.col_offset)


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
    cosines: dict[str, bool] = field(default_factory=dict)  # nn.CosineSimilarity -> eps given
    shuffled: set[str] = field(default_factory=set)  # built with shuffle=True

    def inner(self, rebound: set[str] = frozenset(), origins: bool = True) -> Env:
        """What a nested scope sees: less its own names, less the batches across a function."""
        return Env(self.taint - rebound, {k: v for k, v in self.origins.items() if origins and k not in rebound},
                   {k: v for k, v in self.cosines.items() if k not in rebound}, self.shuffled - rebound)

    def set(self, name: str, origins: frozenset[Origin], tainted: bool, replace: bool, eps: bool | None = None) -> None:
        """``name`` now holds a value with these origins (and a gradient, or a cosine module)."""
        self.origins[name] = origins if replace else self.origins.get(name, EMPTY) | origins
        if tainted:
            self.taint.add(name)
        if eps is not None:
            self.cosines[name] = eps
        elif replace:
            self.cosines.pop(name, None)


class Checker(ast.NodeVisitor):
    """flake8's entry point ``FA`` (group ``flake8.extension``): the findings in one module. The visit
    keeps the ``Env`` of the scope it is in; ``replace`` is False under a branch."""

    def __init__(self, tree: ast.Module, lines: list[str]) -> None:
        self.tree, self.lines = tree, lines
        self.aliases = dict(_DEFAULT_ALIASES)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    self.aliases[alias.asname or top] = alias.name if alias.asname else top
            elif isinstance(node, ast.ImportFrom):
                base = "." * node.level + (node.module or "")
                for alias in node.names:
                    if alias.name != "*":
                        joined = base + alias.name if base.endswith(".") or not base else f"{base}.{alias.name}"
                        self.aliases[alias.asname or alias.name] = joined

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        self.found: dict[tuple[int, int, str], str] = {}  # (line, col, code) -> message
        self.env, self.replace = Env(), True
        self.block(self.tree.body, True)
        for (line, col, code), message in self.found.items():
            yield line, col, f"{code} [pitfall {PITFALL[code]}] {message}", type(self)

    # -- names and reporting -----------------------------------------------------------------

    def qualname(self, node: ast.AST) -> str | None:
        """The imported object a ``Name``/``Attribute`` chain refers to, or None."""
        root, _, rest = (_dotted(node) or "").partition(".")
        if root not in self.aliases:
            return None
        return f"{self.aliases[root]}.{rest}" if rest else self.aliases[root]

    def is_number(self, node: ast.AST) -> bool:
        """A numeric literal: ``-1``, ``2.0``, ``float("inf")``, ``math.inf``."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            return self.is_number(node.operand)
        return self.qualname(node) in _INF_NAMES or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "float"
            and len(node.args) == 1 and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str))

    def is_fp16(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value in _FP16_STRINGS
        return self.qualname(node) in _FP16_NAMES

    def report(self, code: str, node: ast.AST, message: str) -> None:
        """A finding at ``node`` (at the called name, for a method call), in characters."""
        func = getattr(node, "func", None)
        if isinstance(node, ast.Call) and isinstance(func, ast.Attribute):
            line, offset = func.end_lineno, func.end_col_offset - len(func.attr)
        else:
            line, offset = node.lineno, node.col_offset
        text = self.lines[line - 1] if 0 < line <= len(self.lines) else ""
        col = len(text.encode("utf-8")[:offset].decode("utf-8", errors="replace"))
        self.found.setdefault((line, col, code), message)

    # -- the walk ------------------------------------------------------------------------------

    def visit(self, node: ast.AST) -> None:
        """``visit_<node type>``, else the children: one frame per level, as deep as the parser goes."""
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is not None:
            return method(node)
        for child in ast.iter_child_nodes(node):
            self.visit(child)

    def block(self, statements: list[ast.stmt], replace: bool, env: Env | None = None) -> None:
        saved = self.replace, self.env
        self.replace, self.env = replace, env or self.env
        for statement in statements:
            self.visit(statement)
        self.replace, self.env = saved

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        for sub in [*node.decorator_list, *node.args.defaults, *(d for d in node.args.kw_defaults if d)]:
            self.visit(sub)
        self.check_autocast(node.decorator_list, node.body, "@")
        self.block(node.body, True, self.env.inner(_params(node.args), origins=False))

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for sub in [*node.decorator_list, *node.bases, *(k.value for k in node.keywords)]:
            self.visit(sub)
        inner = self.env.inner()
        # every method sees the nn.CosineSimilarity modules and the gradients any method assigns
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Assign, ast.AnnAssign)) and sub.value is not None:
                eps, gradient = self.cosine_module(sub.value), _grad_like(sub.value, set()) is not None
                for target in sub.targets if isinstance(sub, ast.Assign) else [sub.target]:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Attribute) and _dotted(leaf.value) == "self":
                            if eps is not None:
                                inner.cosines[f"self.{leaf.attr}"] = eps
                            if gradient:
                                inner.taint.add(f"self.{leaf.attr}")
        self.block(node.body, True, inner)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.visit(target)
            self.bind(target, node.value, self.env, self.replace)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
            self.bind(node.target, node.value, self.env, self.replace)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self.visit(node.value)
        self.visit(node.target)
        self.bind(node.target, node.value, self.env, False)

    def visit_For(self, node: ast.For | ast.AsyncFor) -> None:
        self.visit(node.iter)
        self.bind_loop(node.target, node.iter, self.env, self.replace)
        self.block(node.body, self.replace)
        self.block(node.orelse, False)

    visit_AsyncFor = visit_For

    def visit_With(self, node: ast.With | ast.AsyncWith) -> None:
        for item in node.items:
            self.visit(item.context_expr)
            if item.optional_vars is not None:
                self.bind(item.optional_vars, item.context_expr, self.env, self.replace)
        self.check_autocast([item.context_expr for item in node.items], node.body, "with ")
        self.block(node.body, self.replace)

    visit_AsyncWith = visit_With

    def visit_If(self, node: ast.If | ast.While) -> None:
        self.visit(node.test)
        self.block(node.body, False)
        self.block(node.orelse, False)

    visit_While = visit_If

    def visit_Try(self, node: ast.Try) -> None:
        for statements in (node.body, *(handler.body for handler in node.handlers), node.orelse, node.finalbody):
            self.block(statements, False)

    visit_TryStar = visit_Try

    def visit_Match(self, node: ast.Match) -> None:
        self.visit(node.subject)
        for case in node.cases:
            if case.guard is not None:
                self.visit(case.guard)
            self.block(case.body, False)

    def visit_ListComp(self, node: ast.ListComp | ast.SetComp | ast.GeneratorExp | ast.DictComp) -> None:
        saved, self.env = self.env, self.env.inner()
        for gen in node.generators:
            self.visit(gen.iter)
            self.bind_loop(gen.target, gen.iter, self.env, True)
            for condition in gen.ifs:
                self.visit(condition)
        for part in [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]:
            self.visit(part)
        self.env = saved

    visit_SetComp = visit_GeneratorExp = visit_DictComp = visit_ListComp

    def visit_Lambda(self, node: ast.Lambda) -> None:
        for default in [*node.args.defaults, *(d for d in node.args.kw_defaults if d is not None)]:
            self.visit(default)
        self.block([node.body], True, self.env.inner(_params(node.args)))

    def visit_NamedExpr(self, node: ast.NamedExpr) -> None:
        self.visit(node.value)
        self.bind(node.target, node.value, self.env, False)

    def visit_Call(self, call: ast.Call) -> None:
        kwargs = {kw.arg: kw.value for kw in call.keywords if kw.arg is not None}
        self.check_norm(call, kwargs)
        self.check_cast(call, kwargs)
        self.check_cosine(call, kwargs)
        func = call.func  # list.append(x) and the like: the list holds x too
        if isinstance(func, ast.Attribute) and func.attr in _MUTATORS and _dotted(func.value) is not None:
            for arg in call.args:
                self.env.set(_dotted(func.value), self.origins(arg, self.env),
                             _grad_like(arg, self.env.taint) is not None, replace=False)
        for child in ast.iter_child_nodes(call):
            self.visit(child)

    # -- the rules -----------------------------------------------------------------------------

    def check_norm(self, call: ast.Call, kwargs: dict[str, ast.expr]) -> None:
        """FA001: a number in the order slot of a norm and no ``dim``."""
        func, args = call.func, call.args
        if _has_splat(call) or "dim" in kwargs:
            return
        if self.qualname(func) in _NORMS:
            if len(args) == 2 and self.is_number(args[1]):
                word = _NORMS[self.qualname(func)]
                self.report("FA001", call, _norm_message(ast.unparse(call), args[0], args[1], word))
        elif (isinstance(func, ast.Attribute) and func.attr == "norm" and self.qualname(func.value) is None
              and len(args) == 1 and self.is_number(args[0])):
            self.report("FA001", call, _norm_message(_short(call, 70), func.value, args[0], "p"))

    def check_cast(self, call: ast.Call, kwargs: dict[str, ast.expr]) -> None:
        """FA003: ``<gradient>.half()`` / ``.to(torch.float16)`` / ``.type(torch.HalfTensor)``."""
        func, args = call.func, call.args
        if not isinstance(func, ast.Attribute) or self.qualname(func.value) is not None:
            return
        dtype = "dtype" in kwargs and self.is_fp16(kwargs["dtype"])
        casts = {"half": not args, "to": dtype or any(self.is_fp16(a) for a in args),
                 "type": dtype or bool(args and self.is_fp16(args[0]))}.get(func.attr, False)
        fragment = _grad_like(func.value, self.env.taint) if casts else None
        if fragment is not None:
            self.report("FA003", call, (
                f"`{_short(call)}` casts a gradient (`{fragment}`) to float16: {_UNDERFLOW} Fix: keep reference "
                f"gradients in float32/float64 (or bfloat16, which has float32's exponent range)."))

    def check_cosine(self, call: ast.Call, kwargs: dict[str, ast.expr]) -> None:
        """FA002 (an eps-clamped cosine of a gradient) and FA004 (a cosine across batches)."""
        name, dotted = self.qualname(call.func), _dotted(call.func)
        args = [a for a in call.args[:2] if not isinstance(a, ast.Starred)]
        what = None  # the called name in a message: the source, unless it names a module
        if name in _COSINE_FUNCTIONS:
            eps = "eps" in kwargs or len(call.args) >= 4 or _has_splat(call)
        elif self.cosine_module(call.func) is not None:
            eps = self.cosine_module(call.func)
        elif dotted is not None and dotted in self.env.cosines:
            what, eps = f"{dotted} (an nn.CosineSimilarity)", self.env.cosines[dotted]
        elif name is not None and name.endswith(".diagnostics.cosine_per_sample"):
            eps = None  # pytest-fa's own cosine has no eps clamp
        else:
            return
        args += [kwargs[k] for k in (("x1", "x2") if eps is not None else ("a", "g")) if k in kwargs]
        gradients = [(a, f) for a in args if eps is False and (f := _grad_like(a, self.env.taint)) is not None]
        if gradients:
            shown, fragment = _short(gradients[0][0], 40), gradients[0][1]
            why = f"`{shown}`" if fragment == shown else f"`{shown}` (gradient-like: `{fragment}`)"
            self.report("FA002", call, (
                f"`{what or _short(call.func)}` on a gradient {why} without an explicit `eps=`: it divides by "
                f"max(‖x‖, eps=1e-8), so once ‖g‖ < 1e-8 the 'cosine' shrinks by ‖g‖/eps and no "
                f"longer measures direction. Fix: compute the cosine in float64 without an eps clamp "
                f"and mark it undefined below the floor: `pytest_fa.core.diagnostics.cosine_per_sample(a, g)`."))
        if len(args) == 2:
            first, second = (self.origins(a, self.env) for a in args)
            if first and second and first.isdisjoint(second):
                where = [" and ".join(sorted(o.description for o in side)) for side in (first, second)]
                self.report("FA004", call, (
                    f"cosine between `{_short(args[0], 40)}` (from {where[0]}) and "
                    f"`{_short(args[1], 40)}` (from {where[1]}): the two come from different batches, "
                    f"so the number measures batch similarity, not credit quality. Fix: compute the credit "
                    f"and the reference gradient on the same forward pass (same x, y)."))

    def cosine_module(self, node: ast.AST) -> bool | None:
        """Whether ``nn.CosineSimilarity(...)`` is given an eps; None for anything else."""
        if not isinstance(node, ast.Call) or self.qualname(node.func) not in _COSINE_MODULES:
            return None
        return any(kw.arg in ("eps", None) for kw in node.keywords) or len(node.args) >= 2 or _has_splat(node)

    def autocast(self, node: ast.AST) -> str | None:
        """Why ``node`` is a float16 autocast; "" for another autocast (or one it cannot tell)."""
        if not isinstance(node, ast.Call) or self.qualname(node.func) not in _AUTOCASTS:
            return None
        name, kwargs = self.qualname(node.func), {kw.arg: kw.value for kw in node.keywords}
        enabled = kwargs.get("enabled")
        if _has_splat(node) or (isinstance(enabled, ast.Constant) and enabled.value is False):
            return ""
        dtype = kwargs.get("dtype", node.args[1] if len(node.args) > 1 else None)
        if dtype is not None:
            return "dtype=torch.float16" if self.is_fp16(dtype) else ""
        if name in _AUTOCAST_FP16_DEFAULT:
            return "torch.cuda.amp.autocast defaults to float16"
        device = kwargs.get("device_type", node.args[0] if node.args else None)
        if (name in _AUTOCAST_CUDA_DEFAULT and isinstance(device, ast.Constant) and isinstance(device.value, str)
                and device.value.split(":")[0] == "cuda"):
            return "CUDA autocast defaults to float16"
        return ""

    def gradient_call(self, nodes: Iterator[ast.AST]) -> ast.Call | None:
        """The first ``torch.autograd.grad(...)`` / ``.backward(...)`` these nodes run under the
        enclosing autocast (not in nested functions, nor under a nested non-float16 autocast)."""
        for node in nodes:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)) or (
                    isinstance(node, (ast.With, ast.AsyncWith))
                    and any(self.autocast(item.context_expr) == "" for item in node.items)):
                continue
            func = getattr(node, "func", None)
            if isinstance(node, ast.Call) and (self.qualname(func) in _GRAD_CALLS or (
                    isinstance(func, ast.Attribute) and func.attr == "backward" and self.qualname(func.value) is None)):
                return node
            found = self.gradient_call(ast.iter_child_nodes(node))
            if found is not None:
                return found
        return None

    def check_autocast(self, contexts: list[ast.expr], body: list[ast.stmt], form: str) -> None:
        """FA003: ``with <float16 autocast>:`` or ``@<float16 autocast>`` around gradients."""
        for context in contexts:
            why = self.autocast(context)
            grad = self.gradient_call(iter(body)) if why else None
            if grad is not None:
                self.report("FA003", context, (
                    f"`{form}{_short(context)}` ({why}) wraps a gradient computation "
                    f"(`{_short(grad.func)}(...)` at line {grad.lineno}): {_UNDERFLOW} Fix: measure reference "
                    f"gradients in float32/float64 (outside the autocast, or `enabled=False`) or with "
                    f"`dtype=torch.bfloat16`."))

    # -- batch origins -------------------------------------------------------------------------

    def origins(self, node: ast.AST, env: Env) -> frozenset[Origin]:
        """The batches the value of ``node`` comes from (empty: unknown)."""
        if isinstance(node, ast.Name):
            return env.origins.get(node.id, EMPTY)
        if isinstance(node, ast.Attribute):
            return env.origins.get(_dotted(node), EMPTY) | self.origins(node.value, env)
        if _is_next(node):  # next(it) advances: every call site is another batch; next(iter(X)) starts afresh
            arg = node.args[0]
            fresh = isinstance(arg, ast.Call) and isinstance(arg.func, ast.Name) and arg.func.id == "iter"
            key = _batch_key("next", arg.args[0] if fresh and len(arg.args) == 1 else None, node, env)
            return frozenset({Origin(key, f"`{_short(node)}` at line {node.lineno}")}).union(
                *(self.origins(child, env) for child in ast.iter_child_nodes(node)))
        if isinstance(node, ast.Subscript):
            inner, dotted, index = self.origins(node.value, env), _dotted(node.value), node.slice
            if (not inner and dotted is not None and re.search("batches|batch_?list", dotted.split(".")[-1].lower())
                    and isinstance(index, (ast.Constant, ast.UnaryOp)) and self.is_number(index)):
                try:
                    value = ast.literal_eval(index)
                except ValueError:  # -math.inf, +float("nan"): named by their source text
                    value = ast.unparse(index)
                return frozenset({Origin(("index", dotted, value), f"`{dotted}[{value}]`")})
            return inner | self.origins(index, env)
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            env = env.inner()
            for gen in node.generators:
                self.bind_loop(gen.target, gen.iter, env, True)
            parts = [node.key, node.value] if isinstance(node, ast.DictComp) else [node.elt]
            return EMPTY.union(*(self.origins(part, env) for part in parts))
        if isinstance(node, ast.Lambda):
            return self.origins(node.body, env.inner(_params(node.args)))
        return EMPTY.union(*(self.origins(child, env) for child in ast.iter_child_nodes(node)))

    def bind(self, target: ast.AST, value: ast.AST | None, env: Env, replace: bool,
             extra: frozenset[Origin] = EMPTY) -> None:
        """``target = value``: its origins, gradient-likeness, cosine module and shuffling."""
        if (isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List))
                and len(target.elts) == len(value.elts)
                and not any(isinstance(e, ast.Starred) for e in (*target.elts, *value.elts))):
            for t, v in zip(target.elts, value.elts):
                self.bind(t, v, env, replace, extra)
            return
        origins = (self.origins(value, env) if value is not None else EMPTY) | extra
        tainted = value is not None and _grad_like(value, env.taint) is not None
        shuffles = isinstance(value, ast.Call) and any(kw.arg == "shuffle" and isinstance(kw.value, ast.Constant)
                                                       and kw.value.value is True for kw in value.keywords)
        for name, replaceable in _leaves(target):
            env.set(name, origins, tainted, replace and replaceable, self.cosine_module(value))
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
            if not self.origins(iterable, env) and _batch_source(iterable):
                extra = frozenset({Origin(_batch_key("for", _unwrapped(iterable), iterable, env),
                                          f"the loop over `{_short(iterable)}` at line {iterable.lineno}")})
        name = iterable.func.id if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Name) else None
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
