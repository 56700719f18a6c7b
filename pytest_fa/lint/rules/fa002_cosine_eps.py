"""FA002 (pitfall 2): an eps-clamped cosine of a gradient.

``torch.nn.functional.cosine_similarity`` / ``torch.cosine_similarity`` without ``eps=`` (nor a
4th positional argument, nor ``**kwargs``), and calls of an ``nn.CosineSimilarity`` built
without eps (inline ``nn.CosineSimilarity(dim=1)(a, g)``, a variable, or a ``self.<attr>``
assigned in any method of the class), where ``x1`` or ``x2`` is gradient-like (see
:mod:`pytest_fa.lint.engine`).
"""

from __future__ import annotations

import ast

from pytest_fa.lint.engine import Cosine, Env, Linter, Rule, short

__all__ = ["RULE"]


def _check(linter: Linter, call: ast.Call, cosine: Cosine, env: Env) -> None:
    if cosine.eps is not False:
        return
    for arg in cosine.args:
        fragment = linter.grad_like(arg, env)
        if fragment is not None:
            shown = short(arg, 40)
            why = f"`{shown}`" if fragment == shown else f"`{shown}` (gradient-like: `{fragment}`)"
            linter.report(RULE.code, call, (
                f"`{cosine.what}` on a gradient {why} without an explicit `eps=`: it divides by "
                f"max(‖x‖, eps=1e-8), so once ‖g‖ < 1e-8 the 'cosine' shrinks by ‖g‖/eps and no "
                f"longer measures direction. Fix: compute the cosine in float64 without an eps clamp "
                f"and mark it undefined below the floor: `pytest_fa.core.diagnostics.cosine_per_sample(a, g)`."
            ))
            return


RULE = Rule("FA002", on_cosine=_check)
