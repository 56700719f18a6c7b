"""Null calibration: Γ under ``n`` fresh random feedback draws, what Γ is without adaptation to the
training ``B_l``; a training-B Γ inside that null band is no evidence of alignment."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.credit import check_dfa_feedback, init_dfa_feedback, output_error
from pytest_fa.core.diagnostics import mean_defined, unit_rows
from pytest_fa.errors import DataError
from pytest_fa.core.probe import at_least_float32
from pytest_fa.core.reference import reference_pass


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
        return None if self.trained is None else [_z(*t) for t in zip(self.trained, self.null_mean, self.null_std)]

    def deep_null(self, first_layer: int = 1) -> tuple[float, float]:
        """Mean over draws and deep layers of Γ, and the mean per-layer std."""
        deep = self.draws[:, first_layer:]
        return float(deep.mean()), float(deep.std(dim=0).mean())


def _z(trained: float, mean: float, std: float) -> float:
    """``(trained − mean) / std``; without spread ±inf on either side of the mean, NaN on it."""
    if std > 0:
        return (trained - mean) / std
    return math.nan if trained == mean else math.copysign(math.inf, trained - mean)


def _fresh_feedback_draws(num_classes: int, feature_dims: Sequence[int], n: int, seed: int = 0,
                          exclude: Sequence[torch.Tensor] | None = None) -> list[list[torch.Tensor]]:
    """``n`` fresh DFA feedback sets: draw ``i`` from a generator seeded ``seed·100003 + i``,
    skipping any draw identical to ``exclude`` (the training feedback is never its own null)."""
    draws: list[list[torch.Tensor]] = []
    index = 0
    while len(draws) < n:
        fresh = init_dfa_feedback(num_classes, feature_dims, torch.Generator().manual_seed(seed * 100_003 + index))
        index += 1
        if exclude is None or len(exclude) != len(fresh) or not all(
                a.shape == b.shape and torch.equal(a.cpu(), b) for a, b in zip(exclude, fresh)):
            draws.append(fresh)
    return draws


def null_gamma(model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]], num_classes: int, *,
               feedback: Sequence[torch.Tensor] | None = None, n: int = 20, seed: int = 0,
               exclude: Sequence[torch.Tensor] | None = None,
               reference: tuple[Sequence[torch.Tensor], torch.Tensor] | None = None) -> NullCalibration:
    """Γ_l = mean over samples of ``cos(e_T B_l, g_l)`` for ``n`` fresh DFA feedback draws (and for the
    training ``feedback``, if given). ``reference``: the ``(N, F_l)`` rows of ``g_l`` and ``(N, classes)``
    output errors, measured already (else one :func:`reference_pass` per batch in eval mode). A draw
    identical to ``exclude`` (by default ``feedback``) is skipped for the next one."""
    if n < 2:
        raise ValueError("null calibration needs n ≥ 2 fresh draws for a spread")
    if reference is None:
        reference = _reference_rows(model, eval_batches)
    rows, errors = reference
    if errors.shape[-1] != num_classes:
        raise DataError(f"num_classes={num_classes}, but the model has {errors.shape[-1]} outputs")
    dims = [r.shape[1] for r in rows]
    if feedback is not None:
        check_dfa_feedback(feedback, num_classes, dims)
    e = errors.to(torch.float64)
    units = [unit_rows(g) for g in rows]
    draws = torch.tensor(
        [[mean_defined(gram_cosines(e, g, b))[0] for b, g in zip(fresh, units)]
         for fresh in _fresh_feedback_draws(num_classes, dims, n, seed, feedback if exclude is None else exclude)],
        dtype=torch.float64,
    )
    trained = None if feedback is None else [mean_defined(gram_cosines(e, g, b))[0] for b, g in zip(feedback, units)]
    return NullCalibration(draws, trained)


def _reference_rows(model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
                    ) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Per-layer rows of ``g_l`` and the output errors ``e`` over ``eval_batches``, in eval
    mode and never below float32 (as the probe measures)."""
    if len(eval_batches) < 1:
        raise DataError("null calibration needs at least one eval batch")
    model = at_least_float32(model)
    per_batch = []
    with interface.eval_mode(model):
        for x, y in eval_batches:
            ref = reference_pass(model, x, y)
            e = output_error(ref.logits, y.to(ref.logits.device))
            per_batch.append(([g.detach() for g in ref.rows], e))
    rows = [torch.cat(layer) for layer in zip(*(b[0] for b in per_batch))]
    return rows, torch.cat([b[1] for b in per_batch])


def gram_cosines(e: torch.Tensor, g_unit: torch.Tensor, feedback: torch.Tensor) -> torch.Tensor:
    """``cos(e_i B, g_i)`` per sample without forming ``e_i B``: with ``ĝ_i = g_i / ‖g_i‖``,
    ``⟨e_i B, ĝ_i⟩ = e_i · (B ĝ_i)`` and ``‖e_i B‖² = e_i (B Bᵀ) e_iᵀ``, products of as many
    numbers as classes; float64, NaN where ``g_i`` or ``e_i B`` is zero."""
    b = feedback.to(device=g_unit.device, dtype=torch.float64)
    e = e.to(g_unit.device)
    inner = (e * (g_unit @ b.T)).sum(dim=1)
    norm = ((e @ (b @ b.T)) * e).sum(dim=1).clamp_min(0).sqrt()
    return inner / norm
