"""Fixtures of the pitfall suite, registered by ``--fa-pitfalls``.

The training runs happen once per session and are shared by every pitfall module; they
run on the GPU when there is one (``--fa-device``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_fa.errors import FAError
from pytest_fa.pitfalls import by_id


@pytest.fixture(scope="session")
def degenerate_dfa(fa_settings):
    """DFA on the ResMLP with MNIST-1D, trained until ‖g_L‖ is at the numerical floor."""
    from pytest_fa.pitfalls.regimes import degenerate_dfa as run

    return run(fa_settings.device)


@pytest.fixture(scope="session")
def healthy_bp(fa_settings):
    """BP on the same architecture and data with the paper's recipe."""
    from pytest_fa.pitfalls.regimes import healthy_bp as run

    return run(fa_settings.device)


@pytest.fixture
def user_checkpoint_path(fa_checkpoint_path):
    """The ``--fa-checkpoint`` path under test, unloaded (skipped without one)."""
    return fa_checkpoint_path


@pytest.fixture
def user_checkpoint(fa_checkpoint):
    """The loaded ``--fa-checkpoint`` under test (skipped without one)."""
    return fa_checkpoint


def loaded_or_skip(runner, path):
    """The session runner's load of ``path`` and its eval batches; a checkpoint pytest-fa
    cannot load is not "exposed" — the protocol items (and pitfall 6.5) say why — so skip."""
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
