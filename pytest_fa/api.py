"""The protocol in one call, from a training loop or a notebook: no bundle, no pytest.

    report = pytest_fa.check(model, test_loader, credit=DFACredit(feedback), frozen_acc=0.65)
    assert report.trustworthy, report

``data``: a ``DataLoader`` (any iterable of ``(x, y)`` batches), an ``(x, y)`` pair of tensors or a
:class:`pytest_fa.training.data.Dataset` (its test split), drawn into ``num_batches`` disjoint batches
of ``batch_size`` by a seeded permutation. The command line's rules hold here too; a half-precision
model is measured through a float32 copy, and the model handed in is left as it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Integral
from typing import Any

import torch
from torch import nn

from pytest_fa.core import interface
from pytest_fa.core.ablation import block_ablation
from pytest_fa.core.credit import OWN_BACKWARD, OwnBackwardCredit
from pytest_fa.core.probe import at_least_float32
from pytest_fa.core.reference import CreditSignal
from pytest_fa.core.report import MIN_EVAL_BATCHES, DiagnosticReport, diagnose
from pytest_fa.core.settings import ProtocolSettings, SettingError, resolve_device
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import DataError, ModelInterfaceError
from pytest_fa.training.data import Dataset, eval_batches
from pytest_fa.training.frozen import check_budget
from pytest_fa.training.trainer import accuracy


def _eval_samples(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of ``data`` as one ``(x, y)`` pair (a loader is read once, to the end)."""
    if isinstance(data, Dataset):
        return data.x_test, data.y_test
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, Iterable) and not isinstance(data, (torch.Tensor, str, bytes, Mapping)):
        batches = []
        for index, batch in enumerate(data):
            if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
                raise DataError(
                    f"batch {index} of the data is a {type(batch).__name__}; check() needs (x, y) "
                    "batches — a DataLoader over a dataset that yields (input, label)"
                )
            batches.append((torch.as_tensor(batch[0]), torch.as_tensor(batch[1])))
        if not batches:
            raise DataError("the data yielded no batches; pass the loader of your test split")
        x, y = (torch.cat(part) for part in zip(*batches))
    else:
        raise DataError(
            f"check() takes a DataLoader (or any iterable of (x, y) batches), an (x, y) pair of "
            f"tensors or a pytest_fa Dataset, not {type(data).__name__}"
            + (" (pass the inputs and labels as an (x, y) pair of tensors)" if isinstance(data, Mapping) else "")
        )
    if len(x) != len(y):
        raise DataError(f"the data has {len(x)} inputs but {len(y)} labels; they must match one to one")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool:
        raise DataError(
            f"labels must be a 1-D tensor of class indices, got shape {tuple(y.shape)} and dtype {y.dtype} "
            "(one-hot labels: pass y.argmax(dim=1))"
        )
    if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
        raise DataError("the inputs contain NaN or inf; clean the data before measuring the model on it")
    return x, y


def check(model: nn.Module, data: Any, *, credit: CreditSignal | str | None = None, frozen_acc: float | None = None,
          headline_acc: float | None = None, trained_epochs: int | None = None, frozen_epochs: int | None = None,
          thresholds: DiagnosticThresholds | None = None, num_batches: int = MIN_EVAL_BATCHES, batch_size: int = 128,
          seed: int = 0, label: str = "", device: torch.device | str | None = None,
          reference_model: nn.Module | None = None, ablation: bool = False,
          init_state: dict[str, Any] | None = None) -> DiagnosticReport:
    """Run the protocol on ``model`` over eval batches drawn from ``data``.

    ``headline_acc`` defaults to the model's accuracy on every sample of ``data`` (recorded in
    ``report.context``). ``frozen_acc`` is the accuracy of your architecture-matched frozen-blocks control;
    without it (d) is not evaluated and the verdict cannot be ``trustworthy``; with ``trained_epochs`` and
    ``frozen_epochs`` both given and different, an ``FABudgetWarning`` says the control's budget differs from
    the model's. ``credit`` is your method's ``credit(x, y, logits, hiddens)``; without it Γ is reported
    unavailable, never ``cos(BP, BP) = 1``; ``credit="own-backward"`` reads it from the model's own backward
    (:class:`~pytest_fa.core.credit.OwnBackwardCredit`). ``reference_model`` is a twin that backpropagates
    truly with the same weights, for a model whose autograd is its method's backward (biotorch:
    ``pytest_fa.core.backprop.bp_twin(model)``); it gives the reference, ``model`` the states, accuracy and credit.
    ``ablation=True`` adds, per block, the accuracy drop on all samples given with the block removed, and
    reset to ``init_state`` (the model's ``state_dict()`` before training) when given
    (:func:`~pytest_fa.core.ablation.block_ablation`).
    """
    if isinstance(credit, str):
        if credit != OWN_BACKWARD:
            raise ModelInterfaceError(
                f"credit={credit!r}: give your method's credit signal, credit(x, y, logits, hiddens) -> "
                f"[a_0, ..., a_L], or {OWN_BACKWARD!r} for what the model's own backward delivers"
            )
        credit = OwnBackwardCredit(model)
    if reference_model is not None and not isinstance(reference_model, nn.Module):
        raise ModelInterfaceError(
            f"reference_model={reference_model!r}: give the twin itself, a model that backpropagates "
            "truly with the same weights (for a biotorch model, pytest_fa.core.backprop.bp_twin(model))"
        )
    if frozen_acc is not None and not (isinstance(frozen_acc, (int, float)) and 0.0 <= frozen_acc <= 1.0):
        raise DataError(f"frozen_acc={frozen_acc!r}: give the control's accuracy as a fraction in [0, 1]")
    for name, value in (("num_batches", num_batches), ("batch_size", batch_size)):
        if not isinstance(value, Integral):
            raise DataError(f"{name}={value!r}: give a whole number")
    try:  # the command line's rules on the eval batches and a device name
        ProtocolSettings(eval_batches=num_batches, batch_size=batch_size,
                         device=device if isinstance(device, str) else "auto")
    except SettingError as exc:
        name = "num_batches" if exc.name == "eval_batches" else exc.name
        raise DataError(f"{name}={exc.value!r}: {exc.message}") from None
    check_budget(trained_epochs, frozen_epochs, "check()")
    if isinstance(device, str):
        device = resolve_device(device)
    x_all, y_all = _eval_samples(data)
    context: dict[str, Any] = {"eval_source": type(data).__name__, "samples_given": len(y_all)}
    batches = eval_batches((x_all, y_all), int(num_batches), int(batch_size), seed=seed)
    measured_acc = _measure(model, x_all, y_all, headline_acc is None)  # labels: all samples given
    present = torch.cat([y for _, y in batches]).unique()
    if len(present) < 2:
        raise DataError(
            f"every label in the eval batches is {int(present[0])}: accuracy and (d) mean nothing on "
            "one class; pass samples of at least two classes"
        )
    if headline_acc is None:
        headline_acc = measured_acc
        context["headline_acc"] = f"measured by check() on all {len(y_all)} samples given"
    removal = None
    if ablation:
        param = next(model.parameters())
        removal = block_ablation(model, x_all.to(param.device), y_all.to(param.device), init_state=init_state)
    return diagnose(
        model, batches, headline_acc=headline_acc, frozen_acc=frozen_acc,
        # n is known only for a headline accuracy check() measured itself, on all samples given
        accuracy_samples=len(y_all) if "headline_acc" in context else None,
        frozen_unavailable=None if frozen_acc is not None else (
            "no frozen_acc given: pass the accuracy of your frozen-blocks control (same "
            "architecture, data and budget, blocks frozen at initialisation)"
        ),
        credit=credit, thresholds=thresholds, label=label, device=device, context=context,
        reference_model=reference_model, ablation=removal,
    )


def _measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, headline: bool) -> float | None:
    """Check every label against the model's logit width; the accuracy on all samples when
    ``headline``. A half-precision model runs as a float32 copy, as in the probe."""
    interface.check_interface(model)
    model = at_least_float32(model)
    param = next(model.parameters())
    x = x.to(param.device, param.dtype if x.is_floating_point() else x.dtype)
    with torch.no_grad(), interface.eval_mode(model):
        classes = interface.forward_hidden(model, x[:2])[0].shape[-1]
    bad = y[(y < 0) | (y >= classes)]
    if len(bad):
        raise DataError(
            f"label {int(bad[0])} is not a class of the model: its logits have {classes} classes, so "
            f"labels must lie in [0, {classes}) ({len(bad)} of the {len(y)} labels given do not)"
        )
    return accuracy(model, x, y.to(param.device)) if headline else None
