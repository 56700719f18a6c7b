"""The rules of :mod:`pytest_fa.lint`, one module per lint code.

Each module builds a :class:`pytest_fa.lint.engine.Rule` with its hooks and registers it; the
code must be the ``lint_code`` of its pitfall in :data:`pytest_fa.pitfalls.PITFALLS`. A new
rule is one module here and one line below.
"""

from pytest_fa.lint.rules import (
    fa001_norm,
    fa002_cosine_eps,
    fa003_half_precision,
    fa004_batches,
)

__all__ = ["fa001_norm", "fa002_cosine_eps", "fa003_half_precision", "fa004_batches"]
