"""Diagnostics (a) and (b) during training: record — or stop at — the first firing. Call
``monitor.step(step)`` after each update and stop when it returns True (the measurement is
degenerate); ``monitor.summary()`` gives the first firing step of each and the compute saved.
With ``credit=`` each record also holds ``gamma_mean``, the mean Γ over layers. Lightning and the
Hugging Face Trainer step it from a callback: ``training.lightning``, ``training.huggingface``."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn

from pytest_fa.core import diagnostics as D
from pytest_fa.core import registry
from pytest_fa.core.probe import run_probe
from pytest_fa.core.reference import CreditSignal
from pytest_fa.core.settings import MIN_EVAL_BATCHES
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.errors import DataError, FAError, setting

MONITORED = ("a", "b")  # the diagnostics a training loop can afford every N steps


def growth_and_floor(
    model: nn.Module, batches, thresholds: DiagnosticThresholds, credit: CreditSignal | None = None
) -> dict[str, Any]:
    """The measurements of (a) (``h_L``, ``max_growth``) and (b) (``g_L``, its gain and error norm)
    and their verdicts under ``thresholds``; with ``credit``, ``gamma_mean`` (None: Γ undefined)."""
    from pytest_fa.core.report import layer_gains, report_from_probe, sound_reference_samples

    probe = run_probe(model, batches, credit)
    h = D.layer_medians(probe.hidden_norms)
    g = D.layer_medians(probe.grad_norms)
    measured = registry.Measurement(probe, h, g, layer_gains(probe), sound_reference_samples(probe, thresholds))
    growth = registry.growth_result(measured, thresholds)
    floor = registry.floor_result(measured, thresholds)
    record = {
        "h_L": float(h[-1]),
        "max_growth": growth.value,
        "g_L": float(g[-1]),
        "g_L_at_reference": floor.value,
        "gain_L": floor.components.get("gain"),
        "error_norm": floor.components.get("error_norm"),
        "batch_size": probe.batch_size,
        "a": bool(growth.fires),
        "b": bool(floor.fires),
        "b_submode": floor.submode,
    }
    if credit is not None:
        record["gamma_mean"] = report_from_probe(probe, thresholds=thresholds).gamma_mean(0)
    return record


@dataclass
class EarlyStopMonitor:
    """Measures (a) and (b) — and the mean Γ with ``credit`` — every ``every`` steps; stops at
    the first of ``stop_on`` to fire."""

    model: nn.Module
    eval_batches: Sequence[tuple[torch.Tensor, torch.Tensor]]
    every: int = 100
    thresholds: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    stop_on: tuple[str, ...] = MONITORED
    total_steps: int | None = None
    credit: CreditSignal | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    first_fired: dict[str, int] = field(default_factory=dict)
    stopped_at: int | None = None
    _count: int = 0

    def __post_init__(self) -> None:
        if self.every < 1:
            raise ValueError("every must be at least 1")
        unknown = set(self.stop_on) - set(MONITORED)
        if unknown:
            raise ValueError(f"stop_on takes 'a' and/or 'b', not {sorted(unknown)}")
        if self.credit is not None and len(self.eval_batches) < MIN_EVAL_BATCHES:
            raise DataError(
                f"the mean Γ needs at least {MIN_EVAL_BATCHES} eval batches, got {len(self.eval_batches)}; "
                f"pass more batches, or no {setting('credit')} to monitor (a) and (b) alone"
            )

    def step(self, step: int | None = None) -> bool:
        """Call once per training step; returns True when training should stop."""
        self._count = step if step is not None else self._count + 1
        if self._count % self.every:
            return False
        record = {"step": self._count, **growth_and_floor(self.model, self.eval_batches, self.thresholds, self.credit)}
        self.records.append(record)
        for key in MONITORED:
            if record[key] and key not in self.first_fired:
                self.first_fired[key] = self._count
        if self.stopped_at is None and any(record[key] for key in self.stop_on):
            self.stopped_at = self._count
            return True
        return False

    @property
    def compute_saved(self) -> float | None:
        """Fraction of ``total_steps`` not spent after stopping (None without both)."""
        if self.stopped_at is None or not self.total_steps:
            return None
        return max(0.0, 1.0 - self.stopped_at / self.total_steps)

    def summary(self) -> str:
        fired = {key: self.first_fired.get(key) for key in MONITORED}
        lines = [f"({key}) {registry.get(key).name}: " + (f"first fired at step {at}" if at else "never fired")
                 for key, at in fired.items()]
        if self.stopped_at is not None:
            saved = self.compute_saved
            lines.append(f"stopped at step {self.stopped_at}"
                         + (f", {100 * saved:.0f}% of the planned compute saved" if saved is not None else ""))
        return "\n".join(lines)


def logged_values(record: dict[str, Any], prefix: str = "fa/") -> dict[str, float]:
    """The numbers of one monitor record as a trainer's logger takes them: ``prefix + key``, the
    verdicts of (a) and (b) as 0.0 / 1.0, undefined values (None) and the submode left out."""
    return {prefix + key: float(value) for key, value in record.items()
            if key not in ("step", "batch_size", "b_submode") and value is not None}


def require(module: str, extra: str) -> ModuleType:
    """``module`` imported, or an :class:`FAError` that says which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise FAError(f"this callback needs {module.split('.')[0]}: pip install pytest-fa[{extra}]") from exc


def check_watched(monitor: EarlyStopMonitor, trained: nn.Module) -> None:
    """The monitor must probe the module the trainer trains (or a submodule of it), not a copy."""
    if not any(module is monitor.model for module in trained.modules()):
        raise FAError(
            f"the monitor probes a {type(monitor.model).__name__} that is not part of the trained "
            f"{type(trained).__name__}; build the EarlyStopMonitor on the network the trainer updates"
        )


def temporal_replay(history: Sequence[dict[str, Any]], thresholds: DiagnosticThresholds | None = None) -> dict[str, int | None]:
    """First epoch at which (a) and (b) fire in a bundle's per-epoch monitor history
    (a history without the backward gain replays (b) under the paper's rule only)."""
    thresholds = thresholds or DiagnosticThresholds()
    first: dict[str, int | None] = {"a": None, "b": None}
    for record in history:
        if "max_growth" not in record:
            raise ValueError("the history has no monitor records; train with monitor=True")
        if first["a"] is None and record["max_growth"] > thresholds.max_growth:
            first["a"] = record["epoch"]
        if first["b"] is None and floor_fires(record, thresholds):
            first["b"] = record["epoch"]
    return first


def floor_fires(record: dict[str, Any], thresholds: DiagnosticThresholds) -> bool:
    """Whether (b) fires on one monitor record under ``thresholds``."""
    g_ref = D.grad_at_reference_batch(record["g_L"], record["batch_size"], thresholds.floor_batch_size)
    return D.floor_rule(g_ref, record.get("gain_L"), thresholds.grad_floor, thresholds.gain_floor, thresholds.b_rule)[0]
