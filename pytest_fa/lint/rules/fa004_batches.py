"""FA004 (pitfall B3): a cosine across batches.

For any cosine (:meth:`pytest_fa.lint.engine.Linter.cosine`, ``cosine_per_sample`` included),
the batch origins of both arguments (:mod:`pytest_fa.lint.engine` says how they flow); flagged
when both origin sets are non-empty and disjoint, silent whenever either is unknown.
"""

from __future__ import annotations

import ast

from pytest_fa.lint.engine import Cosine, Env, Linter, Origin, Rule, short

__all__ = ["RULE"]


def _where(origins: frozenset[Origin]) -> str:
    return " and ".join(sorted(o.description for o in origins))


def _check(linter: Linter, call: ast.Call, cosine: Cosine, env: Env) -> None:
    args = cosine.args
    if len(args) != 2:
        return
    first, second = (linter.origins(a, env) for a in args)
    if first and second and first.isdisjoint(second):
        linter.report(RULE.code, call, (
            f"cosine between `{short(args[0], 40)}` (from {_where(first)}) and "
            f"`{short(args[1], 40)}` (from {_where(second)}): the two come from different batches, "
            f"so the number measures batch similarity, not credit quality. Fix: compute the credit "
            f"and the reference gradient on the same forward pass (same x, y)."
        ))


RULE = Rule("FA004", on_cosine=_check)
