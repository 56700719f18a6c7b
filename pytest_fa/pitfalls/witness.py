"""The shipped paths a guard protects, run end to end on real bundles.

A guard counts only if removing it changes what a user is shown. For each guard two
outcomes are compared, with the guard in place and removed:

- ``python``: :func:`pytest_fa.diagnose` on the model of a real bundle, loaded with
  :func:`pytest_fa.load_checkpoint`, as a notebook or training loop calls it;
- ``cli``: the JSON report of ``pytest --fa-checkpoint=BUNDLE --fa-report-json=...``, run
  in-process from an empty folder (failed items and their first message line included).

The bundles come from the suite's training regimes: ``mode1`` is the degenerate DFA run
(Mode 1: ‖h_L‖ ≈ 1.5e8, its deep references at the floor, so Γ is undefined at h_1 … h_L),
``meaningful`` the same run after its first epoch (before (a) and (b) fire: Γ defined at
every layer, as a paper would report it), ``stripped`` the Mode-1 bundle saved without its
feedback matrices, ``batchnorm`` a DFA SmallCNN (BatchNorm in every block).
Outcomes are compared at 4 significant digits, the precision a report prints.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

PATHS = ("python", "cli")


@dataclass(frozen=True)
class Witness:
    """Where removing a guard must show: which bundle, which shipped paths, and how.

    ``dtype``/``train_mode`` change the model handed to ``diagnose()`` on the python path
    (a float16 model, a model straight out of its training loop); ``frozen_acc`` is passed
    as ``--fa-frozen-acc`` on the cli path (None: pytest-fa trains the matched baseline).
    ``thresholds`` overrides threshold fields on both paths (``--fa-<field>`` on the cli).
    ``why_not`` says why a path is not among ``paths``, or why the witness is not the default.
    """

    bundle: str = "mode1"
    paths: tuple[str, ...] = PATHS
    dtype: str | None = None
    train_mode: bool = False
    frozen_acc: float | None = 0.5
    thresholds: tuple[tuple[str, float], ...] = ()
    why_not: str = ""


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
    raise KeyError(f"unknown shipped path {path!r}; use one of {PATHS}")
