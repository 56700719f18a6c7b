"""Every setting of the protocol, typed and checked once (no torch import): the plugin generates
its ``--fa-*`` options and ini keys from these fields; a bad value is a :class:`SettingError`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from pytest_fa.errors import setting
from pytest_fa.core.interface import BLOCK_OUTPUTS, POOLINGS
from pytest_fa.core.thresholds import DiagnosticThresholds

if TYPE_CHECKING:
    import torch

MIN_EVAL_BATCHES = 8


class SettingError(ValueError):
    """A setting with a value the protocol cannot use; ``name`` is the setting."""

    def __init__(self, name: str, value: Any, message: str) -> None:
        super().__init__(f"{name}={value!r}: {message}")
        self.name, self.value, self.message = name, value, message


def option(help: str, type: type = str, *, metavar: str | None = None, flag: str | None = None,
           repeat: bool = False, path: bool = False) -> dict[str, Any]:
    """Field metadata of a setting that is also an option and ini key; ``flag``: the option's name
    where it is not the field's; ``repeat``: several values; ``path``: relative to the ini file there."""
    return {"option": {"help": help, "type": type, "metavar": metavar, "flag": flag, "repeat": repeat, "path": path}}


@dataclass(frozen=True)
class ProtocolSettings:
    """How the protocol runner loads, matches and measures a checkpoint."""

    model_factory: str | None = field(default=None, metadata=option(
        "factory for a custom architecture, package.module:build", metavar="SPEC", flag="model"))
    hidden: str | None = field(default=None, metadata=option(
        "adapt a model without return_hidden: module paths or patterns of the states h_0, h_1, ..., h_L, "
        "comma-separated (e.g. 'embed,blocks.*'), read by forward hooks", metavar="PATTERNS"))
    block_output: str = field(default="auto", metadata=option(
        "with --fa-hidden: the named blocks return h + f(h) (sum), only f(h) (branch), or auto (read "
        "from the forward pass, the default)", metavar="KIND"))
    pooling: str = field(default="all", metadata=option(
        "with --fa-hidden: read token states (B, T, d) over all tokens (all, the default: ‖h_l‖ and "
        "‖g_l‖ per sample over its T·d values, Γ at the cls token), at the cls token (cls), or as "
        "the mean over tokens (mean)", metavar="KIND"))
    credit: str | None = field(default=None, metadata=option(
        "your method's credit signal for Γ: package.module:make_credit, called as make_credit(model, "
        "checkpoint) -> credit(x, y, logits, hiddens) -> [a_0, ..., a_L]; or own-backward: what the "
        "model's own backward delivers at each state", metavar="SPEC"))
    reference_model: str | None = field(default=None, metadata=option(
        "a twin that backpropagates truly with the same weights, for the reference g_l of a model whose "
        "autograd is its method's backward (custom autograd.Function, backward hooks, feedback weights): "
        "package.module:make_twin, called as make_twin(model) -> twin; pytest_fa.core.backprop:bp_twin "
        "converts biotorch models", metavar="SPEC"))
    data: str | None = field(default=None, metadata=option(
        "data set when the checkpoint does not record one: mnist1d, fashion-mnist, cifar10, cifar100, "
        "synthetic", metavar="NAME"))
    data_root: str | None = field(default=None, metadata=option(
        "folder holding the data set files (CIFAR, Fashion-MNIST)", metavar="DIR", path=True))
    device: str = field(default="auto", metadata=option("auto (default), cpu or cuda[:N]", metavar="DEVICE"))
    eval_batches: int = field(default=MIN_EVAL_BATCHES, metadata=option(
        "number K of disjoint eval batches (default 8, at least 8)", int, metavar="K"))
    batch_size: int = field(default=128, metadata=option("eval batch size B (default 128, the paper's)", int, metavar="B"))
    frozen_acc: float | None = field(default=None, metadata=option(
        "accuracy of your frozen-blocks control; skips training one", float, metavar="ACC"))
    frozen_epochs: int | None = field(default=None, metadata=option(
        "train budget of the frozen baseline for a plain state dict", int, metavar="N"))
    no_ablation: bool = field(default=False, metadata=option(
        "skip the per-block accuracy with each block removed (h_{l+1} = h_l) and reset to its initial "
        "weights (2·L extra accuracy passes over the test split)", bool))
    thresholds: DiagnosticThresholds = field(default_factory=DiagnosticThresholds)
    cache_dir: str | None = None
    credit_map: tuple[str, ...] = field(default=(), metadata=option(
        "credit per checkpoint: PATTERN=package.module:make_credit (repeatable; ini: one per line); a checkpoint "
        "whose path or file name matches PATTERN (fnmatch, first match) gets that factory instead of "
        "--fa-credit or its bundle's method", metavar="PATTERN=SPEC", repeat=True))

    def __post_init__(self) -> None:
        if self.eval_batches < MIN_EVAL_BATCHES:
            raise SettingError("eval_batches", self.eval_batches,
                               f"diagnostic (c) needs at least {MIN_EVAL_BATCHES} disjoint batches")
        if self.batch_size < 2:
            raise SettingError("batch_size", self.batch_size, "an eval batch needs at least 2 samples")
        if self.frozen_acc is not None and not 0.0 <= self.frozen_acc <= 1.0:
            raise SettingError("frozen_acc", self.frozen_acc, "give the accuracy as a fraction in [0, 1], e.g. 0.65")
        if self.frozen_epochs is not None and self.frozen_epochs < 1:
            raise SettingError("frozen_epochs", self.frozen_epochs, "the baseline needs at least 1 epoch")
        for name, choices in (("block_output", BLOCK_OUTPUTS), ("pooling", POOLINGS)):
            if getattr(self, name) not in choices:
                raise SettingError(name, getattr(self, name), f"use one of {', '.join(choices)}")
        if self.hidden is not None and not self.hidden.replace(",", "").strip():
            raise SettingError("hidden", self.hidden, "name the modules of h_0..h_L, e.g. 'embed,blocks.*'")
        resolve_device(self.device, check_only=True)
        credit_map_entries(self.credit_map)


@dataclass(frozen=True)
class SessionSettings(ProtocolSettings):
    """A pytest session's settings: the protocol's, plus the checkpoints and the reports."""

    checkpoint: tuple[str, ...] = field(default=(), metadata=option(
        "checkpoint to diagnose: a pytest-fa bundle, or a state dict with --fa-model (repeatable; ini: "
        "one per line)", metavar="PATH", repeat=True, path=True))
    report_json: str | None = field(default=None, metadata=option(
        "write every protocol report to this JSON file", metavar="PATH", path=True))
    report_md: str | None = field(default=None, metadata=option(
        "write the filled reporting template (Markdown) of every checkpoint to this file", metavar="PATH", path=True))
    plot: str | None = field(default=None, metadata=option(
        "write one PNG per checkpoint into this folder: per-layer ‖h_l‖ and ‖g_l‖ against the floor, Γ_l "
        "against the null band", metavar="DIR", path=True))
    compare: str | None = field(default=None, metadata=option(
        "compare with a saved --fa-report-json file: one `compare` item per checkpoint fails when a "
        "diagnostic crossed its threshold or a figure regressed beyond --fa-compare-fail", metavar="PATH", path=True))
    compare_fail: tuple[str, ...] = field(default=(), metadata=option(
        "tolerance of one figure for --fa-compare (repeatable), e.g. headline_acc:1pp, deep_gamma:0.05, "
        "growth:20%%, grad_ref:10x", metavar="SPEC", repeat=True))
    pitfalls: bool = field(default=False, metadata=option(
        "run the shipped pitfall regression suite (with --fa-checkpoint: also check that checkpoint for "
        "exposure)", bool))
    lint: tuple[str, ...] = field(default=(), metadata=option(
        "check the Python files under PATH for source-level pitfalls with flake8's FA checks, one item per "
        "file (needs pytest-fa[lint]; repeatable)", metavar="PATH", repeat=True, path=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.compare_fail and self.compare is None:
            raise SettingError("compare_fail", list(self.compare_fail),
                               f"tolerances apply to a comparison: give the saved report with {setting('compare', 'PATH')} too")


def option_fields(cls: type = SessionSettings) -> list:
    """The fields of ``cls`` that are options, in the order the help lists them (checkpoints first)."""
    found = [f for f in fields(cls) if "option" in f.metadata]
    return sorted(found, key=lambda f: f.name != "checkpoint")


def credit_map_entries(lines: tuple[str, ...]) -> list[tuple[str, str]]:
    """``[(pattern, spec)]`` of ``credit_map`` lines ``PATTERN = package.module:make_credit``."""
    entries = []
    for line in lines:
        pattern, sep, spec = (part.strip() for part in line.rpartition("="))
        if not (sep and pattern and spec):
            raise SettingError("credit_map", line, "write each line as PATTERN = package.module:make_credit, "
                               "e.g. 'biotorch_* = mymethods:make_credit'")
        module, colon, attr = spec.partition(":")
        if not (module and colon and attr):
            raise SettingError("credit_map", line, f"{spec!r} must look like package.module:make_credit "
                               "(module path, colon, callable)")
        entries.append((pattern, spec))
    return entries


_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


def resolve_device(name: str | None, *, check_only: bool = False) -> torch.device | None:
    """The device ``auto`` (None: cuda where torch sees a GPU, else cpu), ``cpu``, ``cuda`` or ``cuda:N``
    names; ``check_only``: only check the name (None back; torch imported for a CUDA name alone)."""
    name = "auto" if name is None else name
    if not (isinstance(name, str) and _DEVICE.fullmatch(name)):
        raise SettingError("device", name, "use auto, cpu or cuda (cuda:N for GPU number N = 0, 1, …)")
    if check_only and not name.startswith("cuda"):
        return None
    import torch

    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("device", name, "torch sees no CUDA GPU on this machine; use cpu or auto")
    if check_only:
        return None
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
