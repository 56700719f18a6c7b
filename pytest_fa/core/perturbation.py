"""Perturbation correlation ρ, in float64: per sample and layer, the Pearson correlation over ``M``
random unit directions ``v`` of the predicted change ``⟨a_l, ε v⟩`` and the measured
``ℓ(h_l + ε v) − ℓ(h_l)`` (ℓ the per-sample CE), averaged over samples; the gradient gives ≈ +1."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.reference import CreditSignal, reference_pass


@dataclass
class PerturbationResult:
    """Per-layer ρ of the credit, with the gradient (ceiling) and random-vector controls."""

    rho: list[float]
    gradient_control: list[float]
    random_control: list[float]
    directions: int
    epsilon: float

    def deep_mean(self, first_layer: int = 1) -> float:
        values = self.rho[first_layer:]
        return sum(values) / len(values)


def _continue_forward(model: nn.Module, layer: int, h: torch.Tensor) -> torch.Tensor:
    for block in list(model.blocks)[layer:]:
        h = h + block(h)
    return interface.readout_logits(model, h)


def _pearson(pred: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Pearson correlation along the last dimension; NaN where either side is constant."""
    pred = pred - pred.mean(-1, keepdim=True)
    actual = actual - actual.mean(-1, keepdim=True)
    return (pred * actual).sum(-1) / (pred.norm(dim=-1) * actual.norm(dim=-1))


def perturbation_correlation(model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
                             credit: CreditSignal, *, directions: int = 32, epsilon: float = 1e-3, seed: int = 0,
                             aux_modules: Sequence[nn.Module] = ()) -> PerturbationResult:
    """ρ_l of ``credit`` and of the two controls over the eval batches (vector-layout models); the model and
    ``aux_modules`` (nets ``credit`` may call) are measured in float64 and eval mode, then put back."""
    modules = [model, *aux_modules]
    saved = [(m, next(m.parameters()).dtype, m.training) for m in modules]
    for m in modules:
        m.double().eval()
    generator, sums, count = torch.Generator().manual_seed(seed), None, 0
    try:
        for x, y in eval_batches:
            ref = reference_pass(model, x, y, credit, reduction="sum")
            if ref.layout != "vector":
                raise ValueError("perturbation correlation is implemented for (B, d) hidden states")
            y = y.to(ref.logits.device)
            batch = torch.stack([  # (L+1, 3, B)
                torch.stack(_layer_rho(model, layer, h.detach(), y, a, g, directions, epsilon, generator))
                for layer, (h, a, g) in enumerate(zip(ref.hiddens, ref.credits, ref.grads))])
            sums = batch.nansum(-1) if sums is None else sums + batch.nansum(-1)
            count += len(y)
    finally:
        for m, dtype, training in saved:
            m.to(dtype).train(training)
    rho, gradient, random = map(list, zip(*(sums / count).tolist()))
    return PerturbationResult(rho, gradient, random, directions, epsilon)


@torch.no_grad()
def _layer_rho(model, layer, h, y, a, g, directions, epsilon, generator):
    """ρ of the credit ``a``, of the gradient ``g`` and of a random vector, per sample."""
    vectors = [a, g, torch.randn(g.shape, generator=generator, dtype=g.dtype)]
    b, d = h.shape
    v = torch.randn(directions, b, d, generator=generator, dtype=h.dtype).to(h.device)
    v = v / v.norm(dim=-1, keepdim=True)
    base = F.cross_entropy(_continue_forward(model, layer, h), y, reduction="none")
    moved = _continue_forward(model, layer, (h[None] + epsilon * v).reshape(-1, d))
    change = F.cross_entropy(moved, y.repeat(directions), reduction="none").reshape(directions, b) - base
    # the predicted change per direction and sample, (M, B), against the measured one
    return [_pearson(epsilon * (v * c.detach().to(h)[None]).sum(-1).T, change.T) for c in vectors]
