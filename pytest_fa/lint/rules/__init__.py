"""The rules of :mod:`pytest_fa.lint`, one module per code; each code is the ``lint_code`` of its
pitfall in :data:`pytest_fa.pitfalls.PITFALLS`. A new rule is one module here and one entry in
:data:`RULES`.
"""

from pytest_fa.lint.rules import fa001_norm, fa002_cosine_eps, fa003_half_precision, fa004_batches

RULES = (fa001_norm.RULE, fa002_cosine_eps.RULE, fa003_half_precision.RULE, fa004_batches.RULE)
