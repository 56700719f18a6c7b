"""Static checker for the source-level evaluation pitfalls (``--fa-lint`` / ``python -m pytest_fa.lint``).

Pure functions over the ``ast`` of a file; torch is never imported. One rule per lint code,
each the ``lint_code`` of its pitfall in :data:`pytest_fa.pitfalls.PITFALLS`:

- ``FA001`` (pitfall 1, :mod:`.rules.fa001_norm`): a number in a norm's order slot and no ``dim``.
- ``FA002`` (pitfall 2, :mod:`.rules.fa002_cosine_eps`): an eps-clamped cosine of a gradient.
- ``FA003`` (pitfall 3, :mod:`.rules.fa003_half_precision`): float16 casts of gradients, and
  float16 autocasts around gradient computations.
- ``FA004`` (pitfall B3, :mod:`.rules.fa004_batches`): a cosine between quantities from
  different batches.
- ``FA000``: the file does not parse (or decode).

:mod:`.engine` holds what the rules share (name resolution, the gradient-like and batch-origin
dataflow, suppression comments, reporting); :mod:`.cli` the file discovery and the command line.
"""

from __future__ import annotations

from pytest_fa.lint import rules  # noqa: F401  (importing the rules registers them)
from pytest_fa.lint.cli import main, python_files
from pytest_fa.lint.engine import RULES, Finding, lint_file, lint_source

__all__ = ["RULES", "Finding", "lint_file", "lint_source", "main", "python_files"]
