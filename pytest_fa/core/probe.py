"""One pass over the eval batches, one :func:`reference_pass` each in eval mode, that collects every
raw number the protocol needs."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.credit import output_error
from pytest_fa.core.diagnostics import cosine_per_sample, output_error_rel_error, per_sample_norms
from pytest_fa.errors import DataError, NonFiniteError
from pytest_fa.core.reference import CreditSignal, reference_pass


_HALF_DTYPES = (torch.float16, torch.bfloat16)


@dataclass
class Probe:
    """Per-sample measurements over ``num_batches`` eval batches of ``batch_size``;
    ``logit_grad_norms`` is ``‖∂CE/∂z_i‖``, ``error_rel_errors`` its error against float64."""

    hidden_norms: list[torch.Tensor]
    grad_norms: list[torch.Tensor]
    mid_layer: int
    mid_batch_means: torch.Tensor
    cosines: list[torch.Tensor | None] | None
    credit_norms: list[torch.Tensor | None] | None
    batch_size: int
    num_batches: int
    dtype: str
    device: str
    mode: str = "eval"
    layout: str = "vector"
    eval_correct: int = 0
    logit_grad_norms: torch.Tensor | None = None
    error_rel_errors: torch.Tensor | None = None
    grad_rows: list[torch.Tensor] | None = None
    output_errors: torch.Tensor | None = None

    @property
    def num_layers(self) -> int:
        return len(self.hidden_norms)

    @property
    def eval_accuracy(self) -> float:
        return self.eval_correct / (self.batch_size * self.num_batches)


def check_finite_parameters(model: nn.Module) -> None:
    """Raise :class:`NonFiniteError` naming the first parameter or buffer with NaN/Inf."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteError(
                f"weight `{name}` contains NaN or Inf: training diverged or the file is corrupt; "
                "diagnose the last finite checkpoint instead"
            )


def _check_batches(eval_batches: Sequence) -> int:
    if len(eval_batches) < 1:
        raise DataError("no eval batches given")
    sizes = {len(batch[0]) for batch in eval_batches}
    if len(sizes) != 1:
        raise DataError(
            f"eval batches differ in size {sorted(sizes)}; ‖g‖ under a batch-mean loss scales "
            "with 1/B, so every batch must have the same size"
        )
    return sizes.pop()


def run_probe(model: nn.Module, eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
              credit: CreditSignal | None = None, device: torch.device | str | None = None, keep_rows: bool = False,
              reference_model: nn.Module | None = None) -> Probe:
    """Measure ``‖h_l‖``, ``‖g_l‖``, the mid-layer batch-mean gradients and ``cos(a_l, g_l)``, in
    eval mode and at least float32 (through copies). ``keep_rows`` keeps the rows of ``g_l`` and
    the output errors (for the null band); ``reference_model``, a true-backprop twin, gives ``g_l``."""
    batch_size = _check_batches(eval_batches)
    stored = next(model.parameters()).dtype
    model = _measured(model, device)
    if reference_model is not None:
        reference_model = _measured(reference_model, device)
    twin_mode = contextlib.nullcontext() if reference_model is None else interface.eval_mode(reference_model)
    with interface.eval_mode(model), twin_mode:
        probe = probe_batches(model, eval_batches, credit, batch_size, keep_rows, reference_model)
    if stored in _HALF_DTYPES:
        probe.dtype = f"float32 (weights stored in {str(stored).removeprefix('torch.')})"
    return probe


def _measured(model: nn.Module, device: torch.device | str | None) -> nn.Module:
    """``model`` checked, as the probe measures it: at least float32, on ``device``."""
    interface.check_interface(model)
    check_finite_parameters(model)
    stored = next(model.parameters()).device
    model = at_least_float32(model)
    return model if device is None or torch.device(device) == stored else copy.deepcopy(model).to(device)


def at_least_float32(model: nn.Module) -> nn.Module:
    """``model``, or a float32 copy when it is stored in float16 or bfloat16: half precision
    flushes hidden-layer BP gradients (~1e-9) to zero."""
    return copy.deepcopy(model).float() if next(model.parameters()).dtype in _HALF_DTYPES else model


def probe_batches(
    model: nn.Module, eval_batches, credit: CreditSignal | None, batch_size: int, keep_rows: bool = False,
    reference_model: nn.Module | None = None,
) -> Probe:
    """The loop of :func:`run_probe`: one :func:`reference_pass` per batch, in the model's current mode and dtype."""
    hidden_norms, grad_norms, cosines, credit_norms, kept_rows = [], [], [], [], []  # per batch, per layer
    mid_means, logit_grads, rel_errors, kept_errors = [], [], [], []  # per batch
    correct, layout, mid = 0, "vector", 0
    for x, y in eval_batches:
        ref = reference_pass(model, x, y, credit, reference_model=reference_model)
        layout, rows_g, logits = ref.layout, ref.rows, ref.logits.detach()
        mid = (len(rows_g) - 1) // 2  # h_{L/2} of h_0..h_L
        hidden_norms.append([per_sample_norms(interface.norm_rows(h.detach(), layout)) for h in ref.hiddens])
        grad_norms.append([per_sample_norms(interface.norm_rows(g, layout)) for g in ref.grads])
        mid_means.append(rows_g[mid].to(torch.float64).mean(dim=0))
        logit_rows = ref.logit_grad.reshape(len(y), -1)
        logit_grads.append(per_sample_norms(logit_rows))
        y = y.to(logits.device)
        rel_errors.append(output_error_rel_error(logit_rows * len(y), logits.reshape(len(y), -1), y))
        correct += int((logits.argmax(dim=-1) == y).sum())
        if keep_rows:
            kept_rows.append([g.detach() for g in rows_g])
            kept_errors.append(output_error(logits, y))
        if ref.credits is not None:
            cosines.append(_layer_cosines(ref.credits, rows_g))
            credit_norms.append([None if a is None else per_sample_norms(a) for a in ref.credits])
    param = next(model.parameters())
    kept = ([torch.cat(layer) for layer in zip(*kept_rows)], torch.cat(kept_errors)) if keep_rows else (None, None)
    return Probe(
        hidden_norms=_concat_layers(hidden_norms), grad_norms=_concat_layers(grad_norms), mid_layer=mid,
        mid_batch_means=torch.stack(mid_means), cosines=_concat_layers(cosines) if credit is not None else None,
        credit_norms=_concat_layers(credit_norms) if credit is not None else None, batch_size=batch_size,
        num_batches=len(eval_batches), dtype=str(param.dtype).removeprefix("torch."), device=str(param.device),
        layout=layout, eval_correct=correct, logit_grad_norms=torch.cat(logit_grads),
        error_rel_errors=torch.cat(rel_errors), grad_rows=kept[0], output_errors=kept[1],
    )


def _layer_cosines(credits, rows_g) -> list[torch.Tensor | None]:
    """Per layer, the per-sample cosine of ``a_l`` and ``g_l``."""
    for index, a in enumerate(credits):
        if a is not None and not torch.isfinite(a).all():
            raise NonFiniteError(f"the credit signal a_{index} contains NaN or Inf")
    return [None if a is None else cosine_per_sample(a, g) for a, g in zip(credits, rows_g)]


def _concat_layers(per_batch: list[list[torch.Tensor | None]]) -> list[torch.Tensor | None]:
    return [None if column[0] is None else torch.cat(column) for column in zip(*per_batch)]
