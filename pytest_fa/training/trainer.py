"""Train reference models with a method and write checkpoint bundles (``fa-train``).

Batches are index slices of a seeded permutation of the data on the device; each epoch
records test accuracy and the cheap diagnostics (a) and (b) on fixed eval batches.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from pytest_fa.core import diagnostics as D
from pytest_fa.core.interface import accuracy
from pytest_fa.core.settings import SettingError, resolve_device
from pytest_fa.errors import FAError, as_flags
from pytest_fa.training.checkpoint import Bundle, save_bundle
from pytest_fa.training import DEFAULT_EPOCHS
from pytest_fa.training.data import Dataset, eval_batches, load_dataset
from pytest_fa.training.methods import Method, MethodState, get_method
from pytest_fa.models import build_model
from pytest_fa.training.monitor import floor_fires, growth_and_floor
from pytest_fa.core.thresholds import DiagnosticThresholds

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw",)


@dataclass(frozen=True)
class Recipe:
    """Optimiser and schedule; the defaults are the paper's (AdamW, cosine over all steps)."""

    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    schedule: str = "cosine"
    optimizer: str = "adamw"

    def __post_init__(self) -> None:
        for name, positive in (("lr", True), ("weight_decay", False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (positive and value == 0):
                raise ValueError(f"{name}={value!r}: give a finite number {'> 0' if positive else '≥ 0'}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r}: give a whole number ≥ 1")
        for name, known in (("schedule", SCHEDULES), ("optimizer", OPTIMIZERS)):
            if getattr(self, name) not in known:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; the trainer runs {', '.join(known)}")


@dataclass
class TrainResult:
    bundle: Bundle
    model: nn.Module
    state: MethodState
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def train(data: Dataset, method: str | Method = "dfa", *, arch: str = "resmlp",
          arch_config: dict[str, Any] | None = None, model_factory: Callable[[], nn.Module] | None = None,
          epochs: int = DEFAULT_EPOCHS, seed: int = 42, recipe: Recipe = Recipe(),
          device: str | torch.device | None = "cpu", monitor: bool = True, log: Callable[[str], None] | None = None,
          on_epoch: Callable[[nn.Module, dict[str, Any]], bool | None] | None = None) -> TrainResult:
    """Train one model and return its bundle (not yet written to disk). ``on_epoch(model,
    record)`` runs after every epoch; True stops training there (the bundle records the epochs trained)."""
    if epochs < 1:
        raise ValueError("epochs must be at least 1")
    device = resolve_device(str(device) if device is not None else None)
    method = get_method(method) if isinstance(method, str) else method
    torch.manual_seed(seed)
    if model_factory is not None:
        model, arch, arch_config = model_factory(), "custom", {}
    else:
        config = {"input_shape": list(data.input_shape), "num_classes": data.num_classes, **(arch_config or {})}
        model = build_model(arch, **config)
        arch_config = model.config
    model.to(device)
    data = data.to(device)
    generator = torch.Generator().manual_seed(seed + 1)
    state = method.setup(model, data.num_classes, data.input_shape, generator)
    optimizer = torch.optim.AdamW(method.parameters(model, state), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(data.x_train) / recipe.batch_size)
    if recipe.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    else:
        schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    size = min(D.REFERENCE_BATCH_SIZE, len(data.y_test) // 8)  # 8 test batches; none for a tiny split
    monitor_batches = eval_batches(data, 8, size, seed=0) if monitor and size >= 2 else None
    order = torch.Generator(device="cpu").manual_seed(seed)
    history: list[dict[str, Any]] = []
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        tick = time.perf_counter()
        model.train()
        perm = torch.randperm(len(data.x_train), generator=order).to(device)
        total = torch.zeros((), device=device)
        for i in range(steps_per_epoch):
            idx = perm[i * recipe.batch_size : (i + 1) * recipe.batch_size]
            loss, _ = method.loss(model, state, data.x_train[idx], data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.detach()
        record = {"epoch": epoch, "loss": float(total) / steps_per_epoch,
                  "test_acc": accuracy(model, data.x_test, data.y_test), "seconds": time.perf_counter() - tick}
        if monitor_batches is not None:
            measured = growth_and_floor(model, monitor_batches, DiagnosticThresholds())
            record.update({k: measured[k] for k in ("h_L", "max_growth", "g_L", "gain_L", "error_norm", "batch_size")})
        history.append(record)
        if log:
            log(_progress_line(method.name, seed, epochs, record))
        if on_epoch is not None and on_epoch(model, record):
            break
    model.cpu()
    bundle = Bundle(
        arch=arch, arch_config=arch_config, state_dict={k: v.detach().clone() for k, v in model.state_dict().items()},
        method=method.name, method_config=method.config(), feedback=[b.detach().cpu() for b in state.feedback],
        aux={name: {k: v.detach().cpu() for k, v in net.state_dict().items()} for name, net in state.aux.items()},
        data=data.spec, seed=seed, epochs=len(history), recipe=asdict(recipe),
        metrics={"test_acc": history[-1]["test_acc"], "history": history, "planned_epochs": epochs},
    )
    return TrainResult(bundle, model, state, time.perf_counter() - start, history)


def stop_at_floor(model: nn.Module, record: dict[str, Any]) -> bool:
    """``on_epoch`` hook: True once the epoch's restated median ``‖g_L‖`` is below the floor."""
    return floor_fires(record, DiagnosticThresholds(b_rule="paper"))


def _progress_line(method: str, seed: int, epochs: int, r: dict[str, Any]) -> str:
    line = f"{method} s{seed} epoch {r['epoch']:>3}/{epochs}  loss {r['loss']:.4g}  test acc {r['test_acc']:.4f}"
    if "h_L" in r:
        line += f"  ‖h_L‖ {r['h_L']:.3g}  max growth {r['max_growth']:.3g}×  ‖g_L‖ {r['g_L']:.3g}"
        if r.get("gain_L") is not None:
            line += f"  gain {r['gain_L']:.3g}  ‖e‖ {r['error_norm']:.3g}"
    return line + f"  ({r['seconds']:.1f} s)"


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, arch_config: dict[str, int]) -> int:
    """``fa-train`` with checked arguments: load the data, build the model once on its shape
    (a misfit is a usage error), then train each method and seed and write its bundle."""
    data_config = {"num_samples": args.num_samples} if args.num_samples is not None else {}
    log = None if args.quiet else (lambda line: print(line, flush=True))
    print(f"loading {args.data} …", flush=True)
    try:
        data = load_dataset(args.data, root=args.data_root, **data_config)
    except (FAError, SettingError) as exc:
        parser.error(as_flags(str(exc), prefix="--"))
    try:
        build_model(args.arch, input_shape=list(data.input_shape), num_classes=data.num_classes, **arch_config)
    except FAError as exc:
        parser.error(f"--arch {args.arch} does not fit {args.data} with these settings ({exc}); change "
                     "--width or --depth, or pick another --arch")
    for method_name in args.methods:
        method_config = {"penalty": args.penalty} if args.penalty is not None and method_name == "dfa" else {}
        for seed in args.seeds:
            result = train(data, get_method(method_name, **method_config), arch=args.arch, arch_config=arch_config,
                           epochs=args.epochs, seed=seed, device=args.device, log=log,
                           on_epoch=stop_at_floor if args.stop_at_floor else None)
            path = save_bundle(args.out / f"{method_name}_s{seed}.pt", result.bundle)
            print(f"wrote {path}  test acc {result.bundle.headline_acc:.4f}  ({result.seconds:.0f} s)", flush=True)
    return 0
