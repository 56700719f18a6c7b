"""Remove each pitfall's guard in turn: its tests must fail, and what users see must change.

    python tools/guards.py            # every pitfall
    python tools/guards.py 1 6.5      # some

For each pitfall module, the function (or class) named by ``GUARD.target`` is replaced by
the naive implementation wherever pytest-fa holds it — the defining module and every
``pytest_fa`` module that bound the name at import — for one in-process pytest run of that
module, and for the shipped paths its ``GUARD.witness`` names, on a real bundle:

- ``python``: :func:`pytest_fa.diagnose` on the model of the bundle, loaded with
  :func:`pytest_fa.load_checkpoint`, as a notebook or training loop calls it;
- ``cli``: the JSON report of ``pytest --fa-checkpoint=BUNDLE --fa-report-json=...``, run
  in-process from an empty folder (failed items and their first message line included).

A guard is *caught* when its module's tests fail, and *reaches* the shipped code when every
path its witness names reports something else without it (compared at 4 significant digits,
the precision a report prints). The bundles come from the suite's training regimes, shared
across the runs. Not part of the package: tests/test_pitfall_suite.py runs it in the slow tier.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from pytest_fa.pitfalls import PITFALLS, Guard, Pitfall, Witness


# -- the shipped paths, on the witness bundles -------------------------------------------------
def _round(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == 0 or not math.isfinite(value) else float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items() if k not in ("label", "checkpoint")}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


@functools.cache
def _folder() -> Path:
    return Path(tempfile.mkdtemp(prefix="pytest-fa-witness-"))


@functools.cache
def bundle_path(name: str) -> str:
    """Write the named witness bundle once per process and return its path."""
    from pytest_fa.pitfalls import regimes
    from pytest_fa.training.checkpoint import save_bundle

    if name in ("mode1", "stripped"):
        bundle = regimes.degenerate_dfa().bundle
        if name == "stripped":
            bundle = replace(bundle, feedback=[])
    elif name == "meaningful":
        run, epoch = regimes.degenerate_dfa().meaningful, regimes.MEANINGFUL_EPOCH
        bundle = replace(
            run.bundle, state_dict=run.snapshots[epoch], epochs=epoch,
            metrics={**run.bundle.metrics, "test_acc": run.history[epoch - 1]["test_acc"],
                     "history": run.history[:epoch]},
        )
    elif name == "batchnorm":
        bundle = regimes.batchnorm_dfa().bundle
    else:
        raise KeyError(f"unknown witness bundle {name!r}")
    return str(save_bundle(_folder() / f"{name}.pt", bundle))


def python_outcome(witness: Witness) -> dict[str, Any]:
    """What ``diagnose()`` reports on the witness bundle (or the error it raises)."""
    import torch

    from pytest_fa.core import report
    from pytest_fa.core.thresholds import DiagnosticThresholds
    from pytest_fa.errors import FAError
    from pytest_fa.training import checkpoint, data, methods

    try:
        loaded = checkpoint.load_checkpoint(bundle_path(witness.bundle))
        dataset = data.dataset_from_spec(loaded.bundle.data)
        model = loaded.model
        if witness.dtype is not None:
            model = model.to(getattr(torch, witness.dtype))
        model.train(witness.train_mode)
        credit, reason = methods.get_method(loaded.method, **loaded.state.config).credit(model, loaded.state)
        result = report.diagnose(
            model,
            data.eval_batches(dataset, 8, 128, seed=0),
            headline_acc=loaded.bundle.headline_acc,
            frozen_acc=witness.frozen_acc if witness.frozen_acc is not None else 0.5,
            credit=credit,
            credit_unavailable=reason,
            thresholds=DiagnosticThresholds(**dict(witness.thresholds)),
        )
        return _round(result.to_dict())
    except FAError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    except Exception as exc:  # noqa: BLE001 — a crash of the shipped path is an outcome too
        return {"crash": f"{type(exc).__name__}: {exc}"}


class _Items:
    def __init__(self) -> None:
        self.items: list[list[str]] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or not report.passed:
            message = str(report.longrepr).strip().splitlines()[:1] if report.failed else []
            self.items.append([report.nodeid.rpartition("::")[2], report.outcome, *message])


def cli_outcome(witness: Witness) -> dict[str, Any]:
    """The JSON report and item outcomes of ``pytest --fa-checkpoint`` on the witness bundle."""
    path = bundle_path(witness.bundle)
    recorder = _Items()
    here = os.getcwd()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "report.json"
        args = [
            folder, "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
            f"--fa-checkpoint={path}", f"--fa-report-json={out}",
        ]
        if witness.frozen_acc is not None:
            args.append(f"--fa-frozen-acc={witness.frozen_acc}")
        args += [f"--fa-{name.replace('_', '-')}={value}" for name, value in witness.thresholds]
        os.chdir(folder)
        try:
            code = int(pytest.main(args, plugins=[recorder]))
        except Exception as exc:  # noqa: BLE001 — a crash of the shipped path is an outcome too
            return {"crash": f"{type(exc).__name__}: {exc}", "items": recorder.items}
        finally:
            os.chdir(here)
        reports = json.loads(out.read_text())["reports"] if out.exists() else []
    return _round({"exit_code": code, "reports": reports, "items": recorder.items})


def outcome(witness: Witness, path: str) -> dict[str, Any]:
    """The outcome of one shipped path (``python`` or ``cli``) on ``witness``."""
    if path == "python":
        return python_outcome(witness)
    if path == "cli":
        return cli_outcome(witness)
    raise KeyError(f"unknown shipped path {path!r}; use python or cli")


#: the shipped outcome with every guard in place, computed once per process
guarded_outcome = functools.cache(outcome)


# -- removing a guard ----------------------------------------------------------------------------
@dataclass
class GuardResult:
    pitfall: Pitfall
    guard: Guard
    exit_code: int
    failed: list[str]
    bindings: list[str] = field(default_factory=list)
    shipped: dict[str, bool] = field(default_factory=dict)

    @property
    def caught(self) -> bool:
        return self.exit_code == pytest.ExitCode.TESTS_FAILED and bool(self.failed)

    @property
    def reaches_shipped(self) -> bool:
        """Every shipped path of the guard's witness changed without the guard."""
        return bool(self.shipped) and all(self.shipped.values())


def module_of(pitfall: Pitfall):
    return importlib.import_module(f"pytest_fa.pitfalls.{pitfall.module.removesuffix('.py')}")


def bindings(original: object) -> list[tuple[object, str]]:
    """``(module, name)`` for every loaded ``pytest_fa`` module attribute that is ``original``."""
    found = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == "pytest_fa" or module_name.startswith("pytest_fa.")):
            continue
        for name, value in list(vars(module).items()):
            if value is original:
                found.append((module, name))
    return found


@contextmanager
def removed(guard: Guard) -> Iterator[list[str]]:
    """Swap ``guard.target`` for ``guard.naive`` everywhere pytest-fa holds it while the
    block runs; yields the ``module.name`` bindings that were swapped."""
    module_name, _, attr = guard.target.rpartition(".")
    owner = importlib.import_module(module_name)
    original = getattr(owner, attr)
    swapped = bindings(original)
    for module, name in swapped:
        setattr(module, name, guard.naive)
    try:
        yield [f"{module.__name__}.{name}" for module, name in swapped]
    finally:
        for module, name in swapped:
            setattr(module, name, original)


class _Failures:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid.rpartition("::")[2])


def _no_shrinking() -> str:
    """A hypothesis profile that reports the first failing example as it is: with the guard
    removed, a run only needs to know that a test fails, not its smallest example."""
    from hypothesis import Phase, settings

    name = "fa-guard-removed"
    settings.register_profile(name, phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
    return name


def run_without_guard(pitfall: Pitfall, extra_args: list[str] | None = None) -> GuardResult:
    """Run ``pitfall``'s module and its witness's shipped paths with its guard removed."""
    guard = module_of(pitfall).GUARD
    witness = guard.witness
    expected = {path: guarded_outcome(witness, path) for path in witness.paths}
    recorder = _Failures()
    args = [
        "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
        f"--hypothesis-profile={_no_shrinking()}", "--fa-pitfalls", str(pitfall.path), *(extra_args or []),
    ]
    with removed(guard) as swapped:
        code = pytest.main(args, plugins=[recorder])
        shipped = {path: outcome(witness, path) != expected[path] for path in witness.paths}
    return GuardResult(pitfall, guard, int(code), recorder.failed, swapped, shipped)


def render(results: list[GuardResult]) -> str:
    lines = ["pitfall  guard removed -> module tests | shipped paths"]
    for r in results:
        tests = "caught: " + ", ".join(r.failed) if r.caught else f"NOT CAUGHT (exit {r.exit_code})"
        paths = ", ".join(f"{path} {'changed' if changed else 'UNCHANGED'}" for path, changed in r.shipped.items())
        lines.append(f"{r.pitfall.id:<8} {r.guard.target} ({r.guard.description})")
        lines.append(f"         swapped in: {', '.join(r.bindings)}")
        lines.append(f"         -> {tests}")
        lines.append(f"         -> shipped on the {r.guard.witness.bundle} bundle: {paths}")
        if r.guard.witness.why_not:
            lines.append(f"            ({r.guard.witness.why_not})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python tools/guards.py", description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="pitfall ids (default: all)")
    args = parser.parse_args(argv)
    chosen = [p for p in PITFALLS if not args.ids or p.id in args.ids]
    results = [run_without_guard(p) for p in chosen]
    print("\n" + render(results))
    return 0 if all(r.caught and r.reaches_shipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
