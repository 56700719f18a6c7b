"""The protocol's measurements as pure functions over per-sample rows ``(B, F)``, in float64: norms
and cosines scaled by the largest entry first, no epsilon (a zero vector has no direction: NaN)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from pytest_fa.core.thresholds import REFERENCE_BATCH_SIZE  # noqa: F401  (re-exported)
from pytest_fa.errors import DataError, NonFiniteError


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 2:
        raise ValueError(f"expected per-sample rows of shape (B, F), got {tuple(x.shape)}")
    return x.detach().to(torch.float64)


def per_sample_norms(x: torch.Tensor) -> torch.Tensor:
    """``‖x_i‖₂`` for each row, computed as ``max|x_i| · ‖x_i / max|x_i|‖₂`` in float64."""
    x = _rows(x)
    scale = x.abs().amax(dim=1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return scale * torch.linalg.vector_norm(x / safe[:, None], ord=2, dim=1)


def unit_rows(x: torch.Tensor) -> torch.Tensor:
    """``x_i / ‖x_i‖₂`` per row; rows that are all zero become NaN (no direction)."""
    x = _rows(x)
    scale = x.abs().amax(dim=1, keepdim=True)
    scaled = x / scale
    return scaled / torch.linalg.vector_norm(scaled, ord=2, dim=1, keepdim=True)


def cosine_per_sample(a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``cos(a_i, g_i)`` per row, float64, no eps clamp: NaN where either row is zero."""
    if a.shape != g.shape:
        raise ValueError(
            f"credit and reference gradient differ in shape: {tuple(a.shape)} vs {tuple(g.shape)}; "
            "both must be read on the same samples and layer"
        )
    return (unit_rows(a) * unit_rows(g)).sum(dim=1)


def layer_medians(per_layer: Sequence[torch.Tensor]) -> torch.Tensor:
    """Median over samples for each layer: ``(L+1,)`` from a list of ``(N,)`` tensors."""
    return torch.stack([values.to(torch.float64).median() for values in per_layer])


def block_growth(layer_norms: torch.Tensor) -> torch.Tensor:
    """Per-block growth ``‖h_{l+1}‖ / ‖h_l‖`` of the per-layer median norms: ``(L,)``."""
    layer_norms = layer_norms.to(torch.float64)
    if layer_norms.numel() < 2:
        raise ValueError("residual growth needs at least h_0 and h_1")
    return layer_norms[1:] / layer_norms[:-1]


def residual_growth(layer_norms: torch.Tensor) -> tuple[float, int]:
    """Diagnostic (a): ``max_l ‖h_{l+1}‖ / ‖h_l‖`` and its block ``l``; a growth that is not
    finite raises :class:`~pytest_fa.errors.NonFiniteError` naming the first such block."""
    growth = block_growth(layer_norms)
    undefined = (~torch.isfinite(growth)).nonzero()
    if len(undefined):
        block = int(undefined[0])
        before, after = float(layer_norms[block]), float(layer_norms[block + 1])
        zero = f"; most samples' h_{block} is exactly zero: check the weights that produce it" if before == 0 else ""
        raise NonFiniteError(
            f"{'a median ‖h_l‖ is 0' if before == 0 else 'a median ‖h_l‖ is not finite'}: growth undefined at "
            f"block {block} (‖h_{block + 1}‖ / ‖h_{block}‖ = {after:.3g} / {before:.3g}), so (a) cannot say "
            f"whether the residual stream explodes{zero}"
        )
    block = int(torch.argmax(growth))
    return float(growth[block]), block


def grad_at_reference_batch(grad_norm: float, batch_size: int,
                            reference_batch_size: int = REFERENCE_BATCH_SIZE) -> float:
    """``‖g‖ · B / B_ref``: a batch-mean-CE gradient norm restated at batch size ``B_ref``."""
    return grad_norm * batch_size / reference_batch_size


OUTPUT_ERROR_TOLERANCE = 1e-2  # largest relative error of a sample's output error e_i whose reference counts


def backward_gain(grad_norms: torch.Tensor, logit_grad_norms: torch.Tensor) -> torch.Tensor:
    """``‖g_{l,i}‖ / ‖∂CE/∂z_i‖`` per sample, the backward gain from the logits to ``h_l``
    (``‖g_{l,i}‖ = gain · ‖e_i‖ / B``); NaN where ``e_i`` is exactly zero."""
    grad_norms = grad_norms.to(torch.float64)
    logit_grad_norms = logit_grad_norms.to(torch.float64)
    defined = logit_grad_norms > 0
    safe = torch.where(defined, logit_grad_norms, torch.ones_like(logit_grad_norms))
    return torch.where(defined, grad_norms / safe, torch.full_like(grad_norms, float("nan")))


def output_error_rel_error(used: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``‖e_used,i − e_i‖ / ‖e_i‖`` per sample, ``e_i = softmax(z_i) − onehot(y_i)`` in float64 and
    ``used`` the error the backward pass propagated; infinite where ``e_i`` is zero."""
    z = logits.detach().to(torch.float64)
    exact = torch.softmax(z, dim=-1)
    exact[torch.arange(len(y)), y] -= 1.0
    diff = per_sample_norms(used.detach().to(torch.float64) - exact)
    norm = per_sample_norms(exact)
    return torch.where(norm > 0, diff / torch.where(norm > 0, norm, torch.ones_like(norm)), torch.full_like(norm, float("inf")))


def median_defined(values: torch.Tensor) -> float:
    """Median over the non-NaN entries; NaN when none is defined."""
    values = values.to(torch.float64)
    values = values[~torch.isnan(values)]
    return float(values.median()) if values.numel() else float("nan")


FLOOR_SUBMODES = ("above the floor", "Mode 1: backward gain collapsed", "error-saturated")


def floor_rule(
    g_ref: float, gain: float | None, floor: float = 1e-7, gain_floor: float = 1e-3, rule: str = "decomposed"
) -> tuple[bool, str]:
    """Diagnostic (b): whether it fires and its sub-mode, from the restated median ``g_ref`` and
    the median gain at ``h_L``. Below ``floor`` it fires only in Mode 1 (``gain < gain_floor``;
    a healthy or NaN gain is error-saturated); ``rule="paper"`` or ``gain=None``: the floor alone."""
    if math.isnan(g_ref):
        raise NonFiniteError(
            "the reference gradient norm ‖g_L‖ is NaN, which is not a measurement: (b) cannot say "
            "whether it is at the floor; measure it again on a model and eval batches whose "
            "backward pass is finite"
        )
    below = g_ref < floor
    if gain is None:
        return below, "at the floor" if below else FLOOR_SUBMODES[0]
    # NaN < gain_floor is False: an undefined gain counts as error-saturated
    submode = FLOOR_SUBMODES[0] if not below else FLOOR_SUBMODES[1] if gain < gain_floor else FLOOR_SUBMODES[2]
    return (below if rule == "paper" else submode == FLOOR_SUBMODES[1]), submode


def grad_floor(grad_norm: float, batch_size: int, floor: float = 1e-7,
               reference_batch_size: int = REFERENCE_BATCH_SIZE) -> bool:
    """Whether ``‖g_L‖`` restated at ``B_ref`` is below ``floor`` (the paper's (b))."""
    return floor_rule(grad_at_reference_batch(grad_norm, batch_size, reference_batch_size), None, floor)[0]


def direction_stability(batch_mean_grads: torch.Tensor) -> float:
    """Diagnostic (c): mean pairwise cosine of the per-batch mean gradients ``(K, F)`` (near 1:
    drift-dominated); a zero batch mean raises :class:`~pytest_fa.errors.NonFiniteError`."""
    units = unit_rows(batch_mean_grads)
    k = units.shape[0]
    if k < 2:
        raise ValueError("direction stability needs at least two disjoint batches")
    undefined = int(torch.isnan(units).any(dim=1).sum())
    if undefined:
        raise NonFiniteError(
            f"{undefined} of {k} batch-mean reference gradients are exactly zero (or not finite), so they have "
            "no direction and the mean pairwise cosine is undefined: (c) cannot say whether the reference "
            "is drift- or noise-dominated"
        )
    gram = units @ units.T
    i, j = torch.triu_indices(k, k, offset=1)
    return float(gram[i, j].mean())


def stability_submode(stability: float, drift_ceiling: float = 0.30) -> str:
    """Sub-mode of diagnostic (c): ``drift-dominated`` above the ceiling, else ``noise-dominated``."""
    return "drift-dominated" if stability > drift_ceiling else "noise-dominated"


def frozen_margin_pp(trained_acc: float, frozen_acc: float) -> float:
    """Diagnostic (d): ``100 · (trained accuracy − frozen-blocks accuracy)`` in points."""
    for name, acc in (("trained", trained_acc), ("frozen", frozen_acc)):
        if not 0.0 <= acc <= 1.0:
            raise ValueError(f"{name} accuracy {acc} is not a fraction in [0, 1]")
    return 100.0 * (trained_acc - frozen_acc)


CEILING_Z = 2.0  # the z of the Wilson interval behind headroom_lower_bound_pp (about 95 %)


def headroom_lower_bound_pp(acc: float, n: int | None = None) -> float:
    """The smallest headroom ``100·(1 − acc)`` that ``n`` samples support: the lower end of the
    Wilson interval (``z = 2``) of the error rate, without cancellation; the observed one without ``n``."""
    headroom = 1.0 - acc
    if n is None:
        return 100.0 * headroom
    if not isinstance(n, int) or n < 1:
        raise DataError(f"n={n!r} samples: give the number of samples the accuracy was measured on as a "
                        "positive integer, or None when it is not known")
    z2 = CEILING_Z * CEILING_Z
    spread = CEILING_Z * math.sqrt(headroom * (1.0 - headroom) / n + z2 / (4.0 * n * n))
    return 100.0 * headroom * headroom / (headroom + z2 / (2.0 * n) + spread)  # no cancellation


def frozen_at_ceiling(trained_acc: float, frozen_acc: float, margin_pp: float = 2.0, n: int | None = None) -> bool:
    """Whether (d) is not informative: both accuracies' headrooms (:func:`headroom_lower_bound_pp`
    over ``n`` samples) are below ``margin_pp``, so no margin could show whatever the blocks learned."""
    return headroom_lower_bound_pp(frozen_acc, n) < margin_pp and headroom_lower_bound_pp(trained_acc, n) < margin_pp


def frozen_ceiling_reason(trained_acc: float, frozen_acc: float, margin_pp: float, n: int | None = None) -> str:
    """Why (d) cannot show ``margin_pp`` at the ceiling (:func:`frozen_at_ceiling`)."""
    shown = f"trained {trained_acc:.4f} − frozen {frozen_acc:.4f}"
    if n is None:
        why = (f"{shown}, both within {margin_pp:g} pp of 1.0: the margin is at most 100·(1 − frozen) = "
               f"{100 * (1 - frozen_acc):.2f} pp, so it cannot reach {margin_pp:g} pp")
    else:
        why = (f"{shown} on n = {n} samples: the Wilson lower bound (z = {CEILING_Z:g}) of each error rate is "
               f"below {margin_pp:g} pp (trained {headroom_lower_bound_pp(trained_acc, n):.2f} pp, frozen "
               f"{headroom_lower_bound_pp(frozen_acc, n):.2f} pp), so {n} samples cannot show a {margin_pp:g} pp margin")
    return (f"{why} whatever the blocks learned; run (d) on a task or split the frozen-blocks model does not solve"
            + ("" if n is None else ", or measure both accuracies on more samples"))


def mean_defined(values: torch.Tensor) -> tuple[float, int]:
    """Mean over the non-NaN entries and how many there were; NaN when none is defined."""
    defined = values[~torch.isnan(values)]
    return (float(defined.mean()), len(defined)) if len(defined) else (float("nan"), 0)
