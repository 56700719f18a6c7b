"""The protocol core: measurement, the four diagnostics and their report.

Torch-free to import; every module below loads what it needs itself.

- ``registry``, ``thresholds``, ``settings``: what a diagnostic is, its thresholds, the
  protocol's settings (no torch).
- ``interface``, ``adapter``: the model contract (``return_hidden``) and the hook adapter
  that gives any residual network that contract.
- ``reference``, ``credit``: the backprop reference pass and the credit signals compared to it.
- ``diagnostics``, ``probe``, ``calibration``, ``perturbation``: per-sample formulas, the
  probe over eval batches, the random-feedback null band, the perturbation correlation.
- ``report``, ``render``, ``markdown``, ``plot``, ``seeds``, ``compare``, ``tolerance``: the verdict,
  its text / Markdown / figure forms, multi-seed statistics, report-to-report comparison and its tolerances.
"""
