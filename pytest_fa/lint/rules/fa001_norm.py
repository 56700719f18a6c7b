"""FA001 (pitfall 1): a number in the order slot of a norm and no ``dim``.

``t.norm(N)`` (``Tensor.norm(p, dim, ...)``) and ``torch.norm(x, N)`` /
``torch.linalg.norm(x, N)`` / ``torch.linalg.vector_norm(x, N)`` (order second, dim third),
where N is a numeric literal (``-1``, ``2``, ``1.0``, ``float("inf")``, ``math.inf``) and no
dim is given (neither positionally nor as ``dim=``): that is the norm of the whole flattened
tensor. Not flagged: ``p=``/``ord=`` as keywords, any dim given, a non-literal order,
``**kwargs``, ``matrix_norm`` (its default dim is the last two), a ``.norm`` on an imported
module (``np.linalg.norm``) or called with a tensor (``self.norm(h)``, a LayerNorm).
"""

from __future__ import annotations

import ast

from pytest_fa.lint.engine import Env, Linter, Rule, has_splat, keywords, short

__all__ = ["RULE"]

# the order is the first argument after the tensor in every one of these
_NORM_FUNCTIONS = {
    "torch.norm": "p",
    "torch.functional.norm": "p",
    "torch.Tensor.norm": "p",
    "torch.linalg.norm": "ord",
    "torch.linalg.vector_norm": "ord",
}


def _message(text: str, tensor: str, order: ast.AST, word: str) -> str:
    value = ast.unparse(order)
    dim = value if value in ("-1", "0", "1", "-2") else "-1"
    looks_like_dim = f" ({value} reads like a dimension but is the order {word})" if dim == value else ""
    return (
        f"`{text}` passes {word}={value} positionally and no `dim`{looks_like_dim}: it is the "
        f"{word}={value} norm of the whole flattened tensor (one number for the batch), not a norm "
        f"along a dimension. Fix: `{tensor}.norm(dim={dim})` or `torch.linalg.vector_norm({tensor}, dim={dim})` "
        f"for per-sample norms; if the whole tensor is meant, pass `{word}={value}` as a keyword."
    )


def _check(linter: Linter, call: ast.Call, env: Env) -> None:
    if has_splat(call):
        return
    kwargs = keywords(call)
    func = call.func
    name = linter.qualname(func)
    if name in _NORM_FUNCTIONS:
        # f(input, p/ord, dim, ...): a number second with no dim is the norm of everything
        if len(call.args) == 2 and linter.is_number(call.args[1]) and "dim" not in kwargs:
            tensor, order, word = call.args[0], call.args[1], _NORM_FUNCTIONS[name]
            linter.report(RULE.code, call, _message(ast.unparse(call), short(tensor), order, word))
    elif (isinstance(func, ast.Attribute) and func.attr == "norm" and linter.qualname(func.value) is None
          and len(call.args) == 1 and linter.is_number(call.args[0]) and "dim" not in kwargs):
        # tensor.norm(p, dim, ...)
        linter.report(RULE.code, call, _message(short(call, 70), short(func.value), call.args[0], "p"))


RULE = Rule("FA001", on_call=_check)
