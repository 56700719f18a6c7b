"""Remove each pitfall's guard in turn and show that its tests then fail.

    python -m pytest_fa.pitfalls.guards            # every pitfall
    python -m pytest_fa.pitfalls.guards 1 6.5      # some

For each pitfall module, the function named by its ``GUARD.target`` is replaced by the
naive implementation for one in-process pytest run of that module. The training regimes
are shared across the runs, so the whole table costs one training.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from . import PITFALLS, Guard, Pitfall


@dataclass
class GuardResult:
    pitfall: Pitfall
    guard: Guard
    exit_code: int
    failed: list[str]

    @property
    def caught(self) -> bool:
        return self.exit_code == pytest.ExitCode.TESTS_FAILED and bool(self.failed)


def module_of(pitfall: Pitfall):
    return importlib.import_module(f"{__package__}.{pitfall.module.removesuffix('.py')}")


@contextmanager
def removed(guard: Guard) -> Iterator[None]:
    """Swap ``guard.target`` for ``guard.naive`` while the block runs."""
    module_name, _, attr = guard.target.rpartition(".")
    owner = importlib.import_module(module_name)
    original = getattr(owner, attr)
    setattr(owner, attr, guard.naive)
    try:
        yield
    finally:
        setattr(owner, attr, original)


class _Failures:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid.rpartition("::")[2])


def run_without_guard(pitfall: Pitfall, extra_args: list[str] | None = None) -> GuardResult:
    """Run ``pitfall``'s module with its guard removed; record what failed."""
    guard = module_of(pitfall).GUARD
    recorder = _Failures()
    args = [
        "-q", "-p", "no:cacheprovider", "-W", "ignore::pytest.PytestAssertRewriteWarning",
        "--fa-pitfalls", str(pitfall.path), *(extra_args or []),
    ]
    with removed(guard):
        code = pytest.main(args, plugins=[recorder])
    return GuardResult(pitfall, guard, int(code), recorder.failed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_fa.pitfalls.guards", description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="pitfall ids (default: all)")
    args = parser.parse_args(argv)
    chosen = [p for p in PITFALLS if not args.ids or p.id in args.ids]
    results = [run_without_guard(p) for p in chosen]
    print("\npitfall  guard removed -> result")
    for r in results:
        verdict = "caught: " + ", ".join(r.failed) if r.caught else f"NOT CAUGHT (exit {r.exit_code})"
        print(f"{r.pitfall.id:<8} {r.guard.target} ({r.guard.description}) -> {verdict}")
    return 0 if all(r.caught for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
