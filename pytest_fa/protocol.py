"""Run the protocol on checkpoint files: load, match the data, train or reuse the frozen
baseline, diagnose. Everything here is plain Python; the pytest plugin is a thin layer on top.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tempfile
import warnings
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import nn

from pytest_fa.core.ablation import Ablation, block_ablation
from pytest_fa.core.adapter import HookedModel, adapt
from pytest_fa.core.credit import OWN_BACKWARD, OwnBackwardCredit
from pytest_fa.core.interface import has_terminal_norm
from pytest_fa.core.report import DiagnosticReport, DiagnosticThresholds, diagnose
from pytest_fa.core.settings import ProtocolSettings, credit_map_entries, resolve_device
from pytest_fa.errors import (
    CheckpointError, CreditSignalError, DataError, FABudgetWarning, FACacheWarning, FAError, ModelInterfaceError,
    setting,
)
from pytest_fa.models import build_model
from pytest_fa.training.checkpoint import (
    Bundle, CreditFactory, LoadedCheckpoint, import_factory, is_bundle, load_bundle, load_checkpoint, read_checkpoint,
    save_bundle,
)
from pytest_fa.training.data import Dataset, dataset_from_spec, eval_batches, load_dataset
from pytest_fa.training.data import cache_dir as data_cache_dir
from pytest_fa.training.methods import get_method
from pytest_fa.training.trainer import Recipe, accuracy, train

_FROZEN_BASELINE_VERSION = 1


class _MissingBudget(CheckpointError):
    """The checkpoint records no training budget to match a frozen baseline to."""


@dataclass
class FrozenBaseline:
    """The architecture-matched frozen-blocks control of a checkpoint."""

    accuracy: float
    model: nn.Module | None
    key: str
    epochs: int | None
    source: str

    def describe(self) -> str:
        origin = {"given": "given, not trained", "cache": "from cache", "trained": "trained now"}[self.source]
        budget = f", {self.epochs} epochs" if self.epochs else ""
        return f"frozen-blocks baseline {self.accuracy:.4f} ({origin}{budget}, key {self.key[:12]})"


@dataclass
class CheckpointRun:
    """One checkpoint with its data and measured accuracy, ready to diagnose."""

    loaded: LoadedCheckpoint
    data: Dataset
    headline_acc: float
    device: torch.device
    pristine: nn.Module

    @property
    def bundle(self) -> Bundle | None:
        return self.loaded.bundle

    @property
    def path(self) -> str:
        return self.loaded.path

    @property
    def model(self) -> nn.Module:
        return self.loaded.model

    @property
    def method(self) -> str | None:
        return self.loaded.method


class ProtocolRunner:
    """Loads and caches everything per checkpoint path for one session; ``root`` (pytest's
    rootdir) is where factory modules not on ``sys.path`` are looked up."""

    def __init__(self, settings: ProtocolSettings, root: str | Path | None = None) -> None:
        self.settings = settings
        self.root = root
        self.device = resolve_device(settings.device)
        self._runs: dict[str, CheckpointRun] = {}
        self._contents: dict[str, dict[str, Any]] = {}
        self._data: dict[str, Dataset] = {}
        self._baselines: dict[str, FrozenBaseline] = {}
        self._reports: dict[tuple[str, DiagnosticThresholds], DiagnosticReport] = {}
        self._temporary: tempfile.TemporaryDirectory | None = None

    # -- checkpoint and data -----------------------------------------------------------------
    def read(self, path: str) -> None:
        """Read checkpoint ``path`` now (an unreadable file raises here) and keep it for :meth:`run`."""
        self._contents[str(path)] = read_checkpoint(path)

    def run(self, path: str) -> CheckpointRun:
        key = str(path)
        if key not in self._runs:
            self._runs[key] = self._load(key)
        return self._runs[key]

    def _load(self, path: str) -> CheckpointRun:
        contents = self._contents.pop(path) if path in self._contents else read_checkpoint(path)
        # a malformed bundle is refused before its data spec is read
        bundle = Bundle.from_payload(contents, path) if is_bundle(contents) else None
        data = self._dataset_for(path, bundle.data if bundle else None)
        loaded = load_checkpoint(
            path, factory=self._model_factory(), input_shape=data.input_shape,
            num_classes=data.num_classes, allow_unknown_method=self.credit_spec(path) is not None,
            adapt=self._adapted, contents=bundle or contents,
        )
        model = loaded.model.to(self.device)
        _check_model_accepts(model, data, path)
        headline = accuracy(model, data.x_test, data.y_test)
        return CheckpointRun(loaded, data, headline, self.device, copy.deepcopy(model))

    def _dataset_for(self, path: str, spec: dict[str, Any] | None) -> Dataset:
        asked, root = self.settings.data, self.settings.data_root
        if spec is not None and asked and asked != spec.get("name"):
            raise DataError(
                f"{path} was trained on {spec.get('name')!r} but {setting('data', repr(asked))} asks for another; "
                f"the protocol must run on the checkpoint's own data set (drop {setting('data')})"
            )
        key = (asked or "mnist1d") if spec is None else json.dumps(spec, sort_keys=True, default=str)
        if key not in self._data:
            try:
                data = load_dataset(key, root=root) if spec is None else dataset_from_spec(spec, root=root)
            except DataError as exc:
                if spec is None:
                    raise
                raise DataError(f"{path}: the data set its data spec records cannot be rebuilt: {exc}") from None
            self._data[key] = data.to(self.device)
        return self._data[key]

    def eval_batches(self, path: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``K`` disjoint batches of ``B`` test samples, the same for every checkpoint."""
        return eval_batches(self.run(path).data, self.settings.eval_batches, self.settings.batch_size, seed=0)

    # -- frozen baseline ---------------------------------------------------------------------
    def frozen_baseline(self, path: str, cache_dir: Path | None = None) -> FrozenBaseline:
        """Frozen-blocks control matched to the checkpoint's architecture, data, seed, recipe and
        epochs (its schedule and stopping epoch); trained once and cached under ``cache_dir``."""
        run = self.run(path)
        if self.settings.frozen_acc is not None:
            return FrozenBaseline(self.settings.frozen_acc, None, "given", None, "given")
        recipe, epochs, seed, arch, arch_config = self._baseline_budget(run)
        planned = (run.bundle.metrics.get("planned_epochs") if run.bundle else None) or epochs
        spec = {
            "version": _FROZEN_BASELINE_VERSION, "arch": arch, "arch_config": arch_config,
            "model_factory": self.settings.model_factory if arch == "custom" else None, "data": run.data.spec,
            "seed": seed, "epochs": epochs, "planned_epochs": planned, "recipe": recipe, "torch": torch.__version__,
            "device": self.device.type,
        }
        key = hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()
        if key in self._baselines:
            return self._baselines[key]
        file = Path(cache_dir or self.settings.cache_dir or data_cache_dir() / "frozen") / f"frozen-{key[:24]}.pt"
        try:
            lock = _locked(file)
        except OSError as exc:  # a read-only cache: its baseline is still read, a new one goes elsewhere
            baseline = self._cached_baseline(file, key)
            if baseline is not None:
                return self._baselines.setdefault(key, baseline)
            file = self.temporary_cache(exc) / file.name
            lock = _locked(file)
        try:
            baseline = self._cached_baseline(file, key) or self._train_baseline(run, spec, key, file)
        finally:
            lock.release()
        return self._baselines.setdefault(key, baseline)

    def temporary_cache(self, error: OSError) -> Path:
        """This session's folder for frozen baselines when the cache cannot be written; warned about once."""
        if self._temporary is None:
            self._temporary = tempfile.TemporaryDirectory(prefix="pytest-fa-cache-")
            warnings.warn(FACacheWarning(
                f"cannot write the pytest-fa cache ({error.strerror or error}: {error.filename}); frozen-blocks "
                f"baselines trained now are kept in {self._temporary.name} for this session only, cached ones are "
                "still read. To keep them, point the cache at a writable folder: pytest's cache_dir "
                "(-o cache_dir=DIR), or PYTEST_FA_CACHE under -p no:cacheprovider"
            ), stacklevel=2)
        return Path(self._temporary.name)

    def _baseline_budget(self, run: CheckpointRun):
        """``(recipe, epochs, seed, arch, arch_config)`` of the frozen baseline: the checkpoint's own,
        else the ``frozen_epochs`` setting with a warning that nothing checks it."""
        bundle, path, given = run.bundle, run.loaded.path, self.settings.frozen_epochs
        if bundle is not None and bundle.epochs:
            if given is not None and given != bundle.epochs:
                warnings.warn(FABudgetWarning(
                    f"{setting('frozen_epochs', str(given))} is not used for {path}: it records its training "
                    f"budget, {bundle.epochs} epochs, and its frozen-blocks baseline is trained for as many"
                ), stacklevel=2)
            recipe = bundle.recipe or asdict(Recipe())
            try:
                Recipe(**recipe)
            except (TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"{path} records the recipe {recipe}, which the frozen baseline cannot be trained "
                    f"with ({exc}). Re-save the bundle with the recipe it was trained with, or pass "
                    f"{setting('frozen_acc', 'ACC')}, the accuracy of your frozen-blocks control"
                ) from None
            return recipe, bundle.epochs, bundle.seed or 0, bundle.arch, bundle.arch_config
        if given is None:
            what = "a plain state dict" if bundle is None else "a pytest-fa bundle without epochs"
            raise _MissingBudget(
                f"(d) needs the frozen-blocks baseline, but {path} records no training "
                f"budget ({what}). Pass {setting('frozen_acc', 'ACC')} (the accuracy of your "
                f"architecture-matched frozen-blocks control) or {setting('frozen_epochs', 'N')} to train one "
                "with the paper's recipe"
            )
        recipe = bundle.recipe if bundle is not None and bundle.recipe else None
        warnings.warn(FABudgetWarning(
            f"the frozen-blocks baseline of {path} is trained for {given} epochs ({setting('frozen_epochs', str(given))}) "
            + (f"with its recorded recipe: {path} records no training budget" if recipe else
               f"with pytest-fa's default recipe {asdict(Recipe())}: {path} records no training budget and no recipe")
            + ", so nothing checks that they are the model's, and a control trained less than the model inflates "
            f"(d)'s margin. Give the epochs the model was trained for, or {setting('frozen_acc', 'ACC')} of your "
            "own matched control (pytest_fa.frozen_control); a pytest-fa bundle records the budget"
        ), stacklevel=2)
        arch, config = (bundle.arch, bundle.arch_config) if bundle is not None else ("custom", {})
        return recipe or asdict(Recipe()), given, 42, arch, config

    def _cached_baseline(self, file: Path, key: str) -> FrozenBaseline | None:
        try:  # a missing file is a CheckpointError too
            bundle = load_bundle(file)
        except FAError:
            return None
        if bundle.metrics.get("baseline_key") != key:
            return None
        model = self._build(bundle.arch, bundle.arch_config)
        model.load_state_dict(bundle.state_dict)
        return FrozenBaseline(bundle.metrics["test_acc"], model, key, bundle.epochs, "cache")

    def _train_baseline(self, run: CheckpointRun, spec: dict[str, Any], key: str, file: Path) -> FrozenBaseline:
        custom = spec["arch"] == "custom"
        result = train(
            run.data, get_method("frozen"), arch=spec["arch"], arch_config=spec["arch_config"],
            model_factory=(lambda: self._build("custom", spec["arch_config"])) if custom else None,
            epochs=spec["planned_epochs"], seed=spec["seed"], recipe=Recipe(**spec["recipe"]), device=self.device,
            monitor=False, on_epoch=lambda model, record: record["epoch"] >= spec["epochs"],
        )
        result.bundle.metrics["baseline_key"] = key
        if custom:
            result.bundle.arch_config = spec["arch_config"]
        save_bundle(file, result.bundle)
        return FrozenBaseline(result.bundle.headline_acc, result.model, key, spec["epochs"], "trained")

    def credit_spec(self, path: str) -> str | None:
        """The credit factory of ``path``: the first ``credit_map`` pattern matching its path or
        file name, else the ``credit`` setting (None: its bundle's method)."""
        for pattern, spec in credit_map_entries(self.settings.credit_map):
            if fnmatch(str(path), pattern) or fnmatch(Path(path).name, pattern):
                return spec
        return self.settings.credit

    def credit_for(self, loaded: LoadedCheckpoint, model: nn.Module):
        """``(credit, reason)`` for Γ: the checkpoint's factory (:meth:`credit_spec`), else its method."""
        spec = self.credit_spec(loaded.path)
        if spec == OWN_BACKWARD:
            return OwnBackwardCredit(model), ""
        if spec is not None:
            make: CreditFactory = import_factory(spec, "credit", self.root)
            try:
                credit = make(model, loaded)
            except (Exception, SystemExit) as exc:  # noqa: BLE001 — the user's code: say whose error it is
                raise ModelInterfaceError(
                    f"{setting('credit', spec)}: your credit factory raised {type(exc).__name__}: {exc} "
                    "(called as make_credit(model, checkpoint))"
                ) from exc
            if not callable(credit):
                raise ModelInterfaceError(
                    f"{setting('credit', spec)}: the factory returned {type(credit).__name__}, not a credit "
                    "signal; make_credit(model, checkpoint) returns credit(x, y, logits, hiddens) -> [a_0, ..., a_L]"
                )
            return credit, ""
        if not loaded.method:
            return None, f"a plain state dict carries no method and no feedback matrices (pass {setting('credit')})"
        return get_method(loaded.method, **loaded.state.config).credit(model, loaded.state)

    def reference_model_for(self, model: nn.Module) -> nn.Module | None:
        """The ``reference_model`` setting's twin of ``model`` (adapted like it), or None."""
        if self.settings.reference_model is None:
            return None
        make = import_factory(self.settings.reference_model, "reference_model", self.root)
        plain = model.model if isinstance(model, HookedModel) else model
        return self._adapted(make(copy.deepcopy(plain))).to(self.device)

    def _build(self, arch: str, config: dict[str, Any]) -> nn.Module:
        if arch == "custom":
            return self._adapted(self._model_factory()(**(config or {})))
        return build_model(arch, **config)

    def _model_factory(self):
        """The ``model`` setting's factory, or None."""
        spec = self.settings.model_factory
        return None if spec is None else import_factory(spec, "model", self.root)

    def _adapted(self, model: nn.Module) -> nn.Module:
        """``model`` read through forward hooks at the ``hidden`` states, when they are named."""
        if not self.settings.hidden:
            return model
        return adapt(model, self.settings.hidden, block_output=self.settings.block_output, pooling=self.settings.pooling)

    # -- diagnosis ---------------------------------------------------------------------------
    def report(self, path: str, thresholds: DiagnosticThresholds | None = None, cache_dir: Path | None = None) -> DiagnosticReport:
        """The full protocol on one checkpoint (cached per path and thresholds)."""
        thresholds = thresholds or self.settings.thresholds
        key = (str(path), thresholds)
        if key not in self._reports:
            self._reports[key] = self._diagnose(str(path), thresholds, cache_dir)
        return self._reports[key]

    def cached_report(self, path: str, thresholds: DiagnosticThresholds | None = None) -> DiagnosticReport | None:
        """The report of ``path`` if it was computed already, else None."""
        return self._reports.get((str(path), thresholds or self.settings.thresholds))

    def _diagnose(self, path: str, thresholds: DiagnosticThresholds, cache_dir: Path | None) -> DiagnosticReport:
        run = self.run(path)
        loaded, batches, model = run.loaded, self.eval_batches(path), run.pristine
        credit, reason = self.credit_for(loaded, model)
        try:
            baseline = self.frozen_baseline(path, cache_dir)
            frozen_acc, frozen_unavailable = baseline.accuracy, None
        except _MissingBudget as exc:
            baseline, frozen_acc, frozen_unavailable = None, None, str(exc)
        bundle = loaded.bundle
        context = {
            "checkpoint": path, "method": loaded.method, "arch": bundle.arch if bundle else type(loaded.model).__name__,
            "data": run.data.spec.get("name"), "configuration": _configuration(bundle, run.data.spec),
            "seed": bundle.seed if bundle else None, "epochs": bundle.epochs if bundle else None,
            "recorded_headline_acc": bundle.headline_acc if bundle else None,
            "frozen_baseline": baseline.describe() if baseline else frozen_unavailable,
            "terminal_norm": _terminal_norm(model),
        }
        try:
            return diagnose(
                model, batches, headline_acc=run.headline_acc, frozen_acc=frozen_acc,
                accuracy_samples=len(run.data.y_test),  # the headline's test split, as a trained baseline's
                frozen_unavailable=frozen_unavailable, credit=credit, credit_unavailable=reason,
                thresholds=thresholds, label=loaded.label, device=self.device, context=context,
                reference_model=self.reference_model_for(model),
                ablation=None if self.settings.no_ablation else self._ablation(run, model),
            )
        except CreditSignalError as exc:  # name the setting that gave the signal
            spec = self.credit_spec(path)
            if spec is None:
                raise
            raise CreditSignalError(f"{setting('credit', spec)}: {exc}") from exc

    def initial_state(self, run: CheckpointRun) -> tuple[dict[str, Any] | None, str]:
        """``(state_dict at initialisation, "")`` of a bundle, rebuilt as fa-train drew it (the global
        generator seeded with the bundle's seed, then the model built), else ``(None, why not)``."""
        bundle = run.bundle
        if bundle is None:
            return None, "a plain state dict records no initial weights"
        if bundle.arch == "custom" or bundle.seed is None:
            return None, "the bundle records a custom architecture or no seed, so its initial weights cannot be rebuilt"
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(bundle.seed)
            return self._build(bundle.arch, bundle.arch_config).state_dict(), ""

    def _ablation(self, run: CheckpointRun, model: nn.Module) -> Ablation:
        """Each block removed and reset, on the test split of the headline accuracy."""
        init_state, why = self.initial_state(run)
        return block_ablation(model, run.data.x_test, run.data.y_test, init_state=init_state, reset_unavailable=why,
                              accuracy=run.headline_acc)


def _configuration(bundle: Bundle | None, data_spec: dict[str, Any]) -> str | None:
    """What a run was trained as, apart from its seed (None for a plain state dict)."""
    if bundle is None:
        return None
    return json.dumps({"arch": bundle.arch, "arch_config": bundle.arch_config, "method": bundle.method,
                       "method_config": bundle.method_config, "data": data_spec, "epochs": bundle.epochs,
                       "recipe": bundle.recipe}, sort_keys=True, default=str)


def _terminal_norm(model: nn.Module) -> bool | None:
    try:
        return has_terminal_norm(model)
    except FAError:
        return None


def _check_model_accepts(model: nn.Module, data: Dataset, path: str) -> None:
    x = data.x_test[:2]
    try:
        with torch.no_grad():
            logits = model.eval()(x)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the model rejects inputs of shape {tuple(x.shape[1:])} from {data.name!r} "
            f"({exc}); check {setting('data')} and the architecture config"
        ) from exc
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    if logits.shape[-1] != data.num_classes:
        raise CheckpointError(
            f"{path}: the model has {logits.shape[-1]} outputs but {data.name!r} has "
            f"{data.num_classes} classes; check {setting('data')}"
        )


def _locked(file: Path) -> FileLock:
    """The held lock of one cached file: pytest-xdist workers and concurrent runs make it once."""
    file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(f"{file}.lock")
    lock.acquire()
    return lock
