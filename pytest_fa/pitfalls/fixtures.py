"""Fixtures of the pitfall suite (registered by ``--fa-pitfalls``): the training runs, once per
session and realisation (seed:threads, 42:1 unless ``PYTEST_FA_REALISATIONS="42:1,123:2"``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_fa.errors import FAError
from pytest_fa.pitfalls import by_id


REALISATIONS_VARIABLE = "PYTEST_FA_REALISATIONS"


def realisations(text: str | None) -> list[tuple[int, int]]:
    """``"42:1,123:2"`` as ``[(42, 1), (123, 2)]``; nothing given is the default realisation."""
    if not text or not text.strip():
        return [(42, 1)]
    found = []
    for item in text.split(","):
        seed, _, threads = item.strip().partition(":")
        try:
            found.append((int(seed), int(threads or 1)))
        except ValueError:
            raise pytest.UsageError(
                f"{REALISATIONS_VARIABLE}={text!r}: write seed:threads pairs, comma-separated, e.g. 42:1,123:2"
            ) from None
        if found[-1][1] < 1:
            raise pytest.UsageError(f"{REALISATIONS_VARIABLE}={text!r}: a run needs at least one thread")
    return found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise every training test over the realisations (marked ``fa_realisation``, one
    xdist group each); a hypothesis test asserts a property of any model: first one only."""
    if "fa_realisation" not in metafunc.fixturenames:
        return
    xdist = metafunc.config.pluginmanager.hasplugin("xdist")
    chosen = realisations(os.environ.get(REALISATIONS_VARIABLE))
    property_test = getattr(metafunc.function, "is_hypothesis_test", False)
    params = []
    for seed, threads in chosen[:1] if property_test else chosen:
        name = f"s{seed}t{threads}"
        marks = [] if property_test else [pytest.mark.fa_realisation]
        if xdist:
            marks.append(pytest.mark.xdist_group(name=name))
        params.append(pytest.param((seed, threads), id=name, marks=marks))
    metafunc.parametrize("fa_realisation", params, indirect=True, scope="session")


@pytest.fixture(scope="session")
def fa_realisation(request) -> tuple[int, int]:
    """``(seed, threads)`` of the training runs a test measures."""
    return request.param


@pytest.fixture(scope="session")
def degenerate_dfa(fa_settings, fa_realisation):
    """DFA on the ResMLP with MNIST-1D, trained until ‖g_L‖ is at the numerical floor."""
    from pytest_fa.pitfalls.regimes import degenerate_dfa as run

    return run(fa_settings.device, *fa_realisation)


@pytest.fixture(scope="session")
def healthy_bp(fa_settings, fa_realisation):
    """BP on the same architecture and data with the paper's recipe."""
    from pytest_fa.pitfalls.regimes import healthy_bp as run

    return run(fa_settings.device, *fa_realisation)


def loaded_or_skip(runner, path):
    """The runner's load of ``path`` and its eval batches; skip a checkpoint pytest-fa cannot
    load (the protocol items and pitfall 6.5 say why)."""
    try:
        return runner.run(path), runner.eval_batches(path)
    except FAError as exc:
        failure = str(exc)
    pytest.skip(f"pytest-fa cannot load {Path(path).name}: {failure}")


def exposed(pitfall_id: str, evidence: str) -> None:
    """Fail the current test: the user's checkpoint or pipeline is exposed to a pitfall."""
    pitfall = by_id(pitfall_id)
    pytest.fail(
        f"EXPOSED to pitfall {pitfall.id} ({pitfall.title}).\n"
        f"    evidence: {evidence}\n"
        f"    why: {pitfall.cause}\n"
        f"    fix: {pitfall.fix}",
        pytrace=False,
    )
