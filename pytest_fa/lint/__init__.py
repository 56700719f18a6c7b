"""The source-level evaluation pitfalls as a flake8 plugin: ``flake8 --select=FA,E9 src/`` or
``pytest --fa-lint=src/`` (``pip install pytest-fa[lint]``).

Pure functions over the ``ast`` of a file; torch is never imported. One rule per code, each the
``lint_code`` of its pitfall in :data:`pytest_fa.pitfalls.PITFALLS`:

- ``FA001`` (pitfall 1, :mod:`.rules.fa001_norm`): a number in a norm's order slot and no ``dim``.
- ``FA002`` (pitfall 2, :mod:`.rules.fa002_cosine_eps`): an eps-clamped cosine of a gradient.
- ``FA003`` (pitfall 3, :mod:`.rules.fa003_half_precision`): float16 casts of gradients, and
  float16 autocasts around gradient computations.
- ``FA004`` (pitfall B3, :mod:`.rules.fa004_batches`): a cosine between quantities from
  different batches.

A finding reads ``path:line:col: FA00N [pitfall …] message``; flake8's ``# noqa: FA00N`` on its
line silences it. :mod:`.engine` holds what the rules share (name resolution, the gradient-like
and batch-origin dataflow, reporting).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator

from pytest_fa.lint.engine import Linter
from pytest_fa.lint.rules import RULES
from pytest_fa.pitfalls import PITFALLS

__all__ = ["PITFALL", "Checker"]

#: lint code -> the id of its pitfall
PITFALL = {p.lint_code: p.id for p in PITFALLS if p.lint_code}


class Checker:
    """flake8's entry point ``FA`` (group ``flake8.extension``): the findings in one module."""

    def __init__(self, tree: ast.Module, lines: list[str]) -> None:
        self.tree, self.lines = tree, lines

    def run(self) -> Iterator[tuple[int, int, str, type]]:
        for line, col, code, message in Linter(self.tree, self.lines, RULES).run():
            yield line, col, f"{code} [pitfall {PITFALL[code]}] {message}", type(self)
