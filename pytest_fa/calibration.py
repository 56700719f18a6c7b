"""Null calibration: Γ under fresh random feedback, the control every alignment claim needs.

A network trained with feedback ``B_l`` adapts to those matrices; Γ with ``n`` freshly drawn
``B`` of the same distribution estimates what Γ is without that adaptation (≈ 0 ± 0.02 in
the reference study). A training-B Γ inside that null band is not evidence of alignment.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import interface
from .credit import init_dfa_feedback, output_error
from .diagnostics import cosine_per_sample, mean_defined


@dataclass
class NullCalibration:
    """Per-layer Γ under ``n`` fresh feedback draws, beside Γ under the training feedback."""

    draws: torch.Tensor  # (n, L+1): Γ_l of each fresh draw
    trained: list[float] | None

    @property
    def null_mean(self) -> list[float]:
        return self.draws.mean(dim=0).tolist()

    @property
    def null_std(self) -> list[float]:
        return self.draws.std(dim=0).tolist()

    def z_scores(self) -> list[float] | None:
        """``(Γ_trained − null mean) / null std`` per layer."""
        if self.trained is None:
            return None
        return [(t - m) / s if s > 0 else float("inf") for t, m, s in zip(self.trained, self.null_mean, self.null_std)]

    def deep_null(self, first_layer: int = 1) -> tuple[float, float]:
        """Mean over draws and deep layers of Γ, and the mean per-layer std."""
        deep = self.draws[:, first_layer:]
        return float(deep.mean()), float(deep.std(dim=0).mean())


def null_gamma(
    model: nn.Module,
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    num_classes: int,
    *,
    feedback: Sequence[torch.Tensor] | None = None,
    n: int = 20,
    seed: int = 0,
) -> NullCalibration:
    """Γ_l with ``n`` fresh DFA feedback draws (and with ``feedback``, the training B, if given).

    Γ_l is the mean over samples of ``cos(e_T B_l, g_l)``, the same statistic the report
    uses; the forward and backward pass runs once per batch for all draws.
    """
    if n < 2:
        raise ValueError("null calibration needs n ≥ 2 fresh draws for a spread")
    was_training = model.training
    model.eval()
    try:
        per_batch = [_batch_cosines(model, x, y, num_classes, feedback, n, seed) for x, y in eval_batches]
    finally:
        model.train(was_training)
    fresh = torch.cat([b[0] for b in per_batch], dim=2)  # (n, L+1, N)
    draws = torch.tensor([[mean_defined(layer)[0] for layer in draw] for draw in fresh], dtype=torch.float64)
    trained = None
    if feedback is not None:
        own = torch.cat([b[1] for b in per_batch], dim=1)  # (L+1, N)
        trained = [mean_defined(layer)[0] for layer in own]
    return NullCalibration(draws, trained)


def _batch_cosines(model, x, y, num_classes, feedback, n, seed):
    param = next(model.parameters())
    x = x.to(param.device, param.dtype)
    y = y.to(param.device)
    x.requires_grad_(True)
    logits, hiddens = interface.forward_hidden(model, x)
    grads = torch.autograd.grad(F.cross_entropy(logits, y), hiddens)
    layout = interface.hidden_layout(model, hiddens[0])
    rows = [interface.per_sample(g, layout) for g in grads]
    e = output_error(logits, y)
    dims = [r.shape[1] for r in rows]
    draws = []
    # the same seed gives the same draws for every batch: each draw is one fixed set of B
    for index in range(n):
        fresh = init_dfa_feedback(num_classes, dims, torch.Generator().manual_seed(seed * 100_003 + index))
        draws.append(torch.stack([cosine_per_sample(e @ b.to(e), g) for b, g in zip(fresh, rows)]))
    own = None
    if feedback is not None:
        own = torch.stack([cosine_per_sample(e @ b.to(e), g) for b, g in zip(feedback, rows)])
    return torch.stack(draws), own
