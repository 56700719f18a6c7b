"""FA003 (pitfall 3): float16 gradients.

``.half()``, ``.to(..., torch.float16 | torch.half, ...)``, ``.to(dtype=...)``,
``.type(torch.HalfTensor | torch.cuda.HalfTensor | "torch.HalfTensor")`` on a gradient-like
receiver; and a float16 autocast (``torch.autocast``/``torch.amp.autocast`` with
``dtype=torch.float16``, or on a literal ``"cuda"`` device without dtype;
``torch.cuda.amp.autocast`` unless another dtype is given; never with ``enabled=False``) used
as ``with`` or as a decorator whose body calls ``torch.autograd.grad``/``torch.autograd.backward``
or ``.backward(...)`` (not inside nested functions, nor under a nested non-fp16 autocast).
"""

from __future__ import annotations

import ast

from pytest_fa.lint.engine import Env, Linter, Rule, has_splat, keywords, short

__all__ = ["RULE"]

_FP16_NAMES = {"torch.float16", "torch.half", "torch.HalfTensor", "torch.cuda.HalfTensor"}
_FP16_STRINGS = {"torch.HalfTensor", "torch.cuda.HalfTensor"}
_GRAD_CALLS = {"torch.autograd.grad", "torch.autograd.backward"}
_AUTOCAST_CUDA_DEFAULT = {"torch.autocast", "torch.amp.autocast", "torch.amp.autocast_mode.autocast"}
_AUTOCAST_FP16_DEFAULT = {"torch.cuda.amp.autocast", "torch.cuda.amp.autocast_mode.autocast"}
_AUTOCAST_OTHER = {"torch.cpu.amp.autocast", "torch.cpu.amp.autocast_mode.autocast"}

_UNDERFLOW = "float16's smallest subnormal is 6e-8, so hidden-layer BP gradients (~1e-9) flush to zero."


def _is_fp16(linter: Linter, node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in _FP16_STRINGS
    return linter.qualname(node) in _FP16_NAMES


def _casts_to_fp16(linter: Linter, call: ast.Call, method: str) -> bool:
    kwargs = keywords(call)
    dtype_keyword = "dtype" in kwargs and _is_fp16(linter, kwargs["dtype"])
    if method == "half":
        return not call.args
    if method == "to":
        return any(_is_fp16(linter, a) for a in call.args) or dtype_keyword
    if method == "type":
        return bool(call.args and _is_fp16(linter, call.args[0])) or dtype_keyword
    return False


def _check_cast(linter: Linter, call: ast.Call, env: Env) -> None:
    """``<gradient>.half()`` / ``.to(torch.float16)`` / ``.type(torch.HalfTensor)``."""
    func = call.func
    if not isinstance(func, ast.Attribute) or linter.qualname(func.value) is not None:
        return
    if not _casts_to_fp16(linter, call, func.attr):
        return
    fragment = linter.grad_like(func.value, env)
    if fragment is None:
        return
    linter.report(RULE.code, call, (
        f"`{short(call)}` casts a gradient (`{fragment}`) to float16: {_UNDERFLOW} Fix: keep reference "
        f"gradients in float32/float64 (or bfloat16, which has float32's exponent range)."
    ))


def _autocast_fp16(linter: Linter, call: ast.AST) -> str | None:
    """Why this ``with`` item is a float16 autocast, or None (not one, or unsure)."""
    if not isinstance(call, ast.Call) or has_splat(call):
        return None
    name = linter.qualname(call.func)
    kwargs = keywords(call)
    enabled = kwargs.get("enabled")
    if isinstance(enabled, ast.Constant) and enabled.value is False:
        return None
    dtype = kwargs.get("dtype", call.args[1] if len(call.args) > 1 else None)
    if name in _AUTOCAST_CUDA_DEFAULT:
        if dtype is not None:
            return "dtype=torch.float16" if _is_fp16(linter, dtype) else None
        device = kwargs.get("device_type", call.args[0] if call.args else None)
        if isinstance(device, ast.Constant) and isinstance(device.value, str) and device.value.split(":")[0] == "cuda":
            return "CUDA autocast defaults to float16"
        return None
    if name in _AUTOCAST_FP16_DEFAULT:
        if dtype is None:
            return "torch.cuda.amp.autocast defaults to float16"
        return "dtype=torch.float16" if _is_fp16(linter, dtype) else None
    if name in _AUTOCAST_OTHER:
        return "dtype=torch.float16" if dtype is not None and _is_fp16(linter, dtype) else None
    return None


def _is_autocast(linter: Linter, call: ast.AST) -> bool:
    return isinstance(call, ast.Call) and linter.qualname(call.func) in (
        _AUTOCAST_CUDA_DEFAULT | _AUTOCAST_FP16_DEFAULT | _AUTOCAST_OTHER)


def _gradient_call(linter: Linter, nodes: list[ast.stmt]) -> ast.Call | None:
    """The first ``torch.autograd.grad(...)`` / ``.backward(...)`` these statements run under
    the enclosing autocast (not in nested functions, nor under a nested non-fp16 autocast)."""
    stack: list[ast.AST] = list(reversed(nodes))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, (ast.With, ast.AsyncWith)) and any(
                _is_autocast(linter, i.context_expr) and _autocast_fp16(linter, i.context_expr) is None
                for i in node.items):
            continue
        if isinstance(node, ast.Call):
            func = node.func
            if linter.qualname(func) in _GRAD_CALLS or (isinstance(func, ast.Attribute) and func.attr == "backward"
                                                        and linter.qualname(func.value) is None):
                return node
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return None


def _check_autocast(linter: Linter, contexts: list[ast.expr], body: list[ast.stmt], form: str) -> None:
    """``with <fp16 autocast>:`` (or ``@<fp16 autocast>`` on a function) around gradients."""
    for context in contexts:
        why = _autocast_fp16(linter, context)
        if why is None:
            continue
        grad = _gradient_call(linter, body)
        if grad is None:
            continue
        linter.report(RULE.code, context, (
            f"`{form}{short(context)}` ({why}) wraps a gradient computation "
            f"(`{short(grad.func)}(...)` at line {grad.lineno}): {_UNDERFLOW} Fix: measure reference "
            f"gradients in float32/float64 (outside the autocast, or `enabled=False`) or with `dtype=torch.bfloat16`."
        ))


RULE = Rule("FA003", on_call=_check_cast, on_wrap=_check_autocast)
