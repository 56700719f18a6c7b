"""Remove each pitfall's guard in turn: its tests must fail, and what users see must change.

    python -m pytest_fa.pitfalls.guards            # every pitfall
    python -m pytest_fa.pitfalls.guards 1 6.5      # some

For each pitfall module, the function (or class) named by ``GUARD.target`` is replaced by
the naive implementation wherever pytest-fa holds it — the defining module and every
``pytest_fa`` module that bound the name at import — for one in-process pytest run of that
module, and for the shipped paths of :mod:`pytest_fa.pitfalls.witness`: ``diagnose()`` on a
real bundle and the JSON report of ``pytest --fa-checkpoint``. A guard is *caught* when its
module's tests fail, and *reaches* the shipped code when every path its witness names
reports something else without it. The training regimes are shared across the runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from pytest_fa.pitfalls import PITFALLS, Guard, Pitfall
from pytest_fa.pitfalls.witness import Witness, outcome


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
    return importlib.import_module(f"{__package__}.{pitfall.module.removesuffix('.py')}")


def witness_of(guard: Guard) -> Witness:
    return guard.witness if guard.witness is not None else Witness()


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


_GUARDED: dict[tuple[Witness, str], dict] = {}


def guarded_outcome(witness: Witness, path: str) -> dict:
    """The shipped outcome with every guard in place (computed once per process)."""
    key = (witness, path)
    if key not in _GUARDED:
        _GUARDED[key] = outcome(witness, path)
    return _GUARDED[key]


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
    witness = witness_of(guard)
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
        witness = witness_of(r.guard)
        lines.append(f"{r.pitfall.id:<8} {r.guard.target} ({r.guard.description})")
        lines.append(f"         swapped in: {', '.join(r.bindings)}")
        lines.append(f"         -> {tests}")
        lines.append(f"         -> shipped on the {witness.bundle} bundle: {paths}")
        if witness.why_not:
            lines.append(f"            ({witness.why_not})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_fa.pitfalls.guards", description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="pitfall ids (default: all)")
    args = parser.parse_args(argv)
    chosen = [p for p in PITFALLS if not args.ids or p.id in args.ids]
    results = [run_without_guard(p) for p in chosen]
    print("\n" + render(results))
    return 0 if all(r.caught and r.reaches_shipped for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
