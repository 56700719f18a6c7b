"""Fixtures of the plugin. With several ``--fa-checkpoint`` options, every test that uses
one of them runs once per checkpoint."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

from pytest_fa.errors import FAError
from pytest_fa.plugin._state import STATE_KEY

if TYPE_CHECKING:
    import torch

    from pytest_fa.core.report import DiagnosticReport
    from pytest_fa.core.settings import SessionSettings
    from pytest_fa.core.thresholds import DiagnosticThresholds
    from pytest_fa.protocol import CheckpointRun, FrozenBaseline, ProtocolRunner


@contextmanager
def clean_errors() -> Iterator[None]:
    """Turn pytest-fa input errors into a one-paragraph failure without a traceback."""
    try:
        yield
    except FAError as exc:
        pytest.fail(f"pytest-fa: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def fa_runner(request: pytest.FixtureRequest) -> ProtocolRunner:
    """The session's :class:`~pytest_fa.protocol.ProtocolRunner`."""
    return request.config.stash[STATE_KEY].runner


@pytest.fixture(scope="session")
def fa_settings(request: pytest.FixtureRequest) -> SessionSettings:
    """The session's :class:`~pytest_fa.core.settings.SessionSettings`: every ``--fa-*``
    option, resolved from the command line, then the ini file, then the defaults."""
    return request.config.stash[STATE_KEY].settings


@pytest.fixture(scope="session")
def fa_checkpoint_path(request: pytest.FixtureRequest) -> str:
    """The ``--fa-checkpoint`` path under test, not yet loaded (skipped without one)."""
    path = getattr(request, "param", None)
    if path is None:
        pytest.skip("no checkpoint given; pass --fa-checkpoint=PATH")
    return path


@pytest.fixture(scope="session")
def fa_checkpoint(fa_checkpoint_path: str, fa_runner: ProtocolRunner) -> CheckpointRun:
    """The loaded checkpoint (model, bundle, data, measured headline accuracy)."""
    with clean_errors():
        return fa_runner.run(fa_checkpoint_path)


@pytest.fixture
def fa_model(fa_checkpoint: CheckpointRun) -> torch.nn.Module:
    """A private copy of the checkpoint's model in eval mode, free to change (the protocol diagnoses its own)."""
    return copy.deepcopy(fa_checkpoint.model).eval()


@pytest.fixture
def fa_eval_batches(fa_checkpoint: CheckpointRun, fa_runner: ProtocolRunner) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``--fa-eval-batches`` disjoint test batches of ``--fa-batch-size``, fixed across runs."""
    with clean_errors():
        return fa_runner.eval_batches(fa_checkpoint.path)


@pytest.fixture
def fa_feedback_matrices(fa_checkpoint: CheckpointRun) -> list[torch.Tensor]:
    """The training feedback matrices ``B_l`` saved with the checkpoint (empty for BP)."""
    return list(fa_checkpoint.loaded.state.feedback)


@pytest.fixture
def fa_frozen_baseline(request: pytest.FixtureRequest, fa_checkpoint: CheckpointRun, fa_runner: ProtocolRunner) -> FrozenBaseline:
    """The architecture-matched frozen-blocks control, trained once and cached."""
    with clean_errors():
        return fa_runner.frozen_baseline(fa_checkpoint.path, request.config.stash[STATE_KEY].cache_dir())


@pytest.fixture
def fa_thresholds(request: pytest.FixtureRequest) -> DiagnosticThresholds:
    """Session thresholds with the test's ``fa_protocol(...)`` overrides applied."""
    state, marker = request.config.stash[STATE_KEY], request.node.get_closest_marker("fa_protocol")
    return state.thresholds if marker is None else state.check_marker(marker)


@pytest.fixture
def fa_report(request: pytest.FixtureRequest, fa_checkpoint: CheckpointRun, fa_thresholds: DiagnosticThresholds) -> DiagnosticReport:
    """The full protocol report of the checkpoint under ``fa_thresholds``."""
    with clean_errors():
        return request.config.stash[STATE_KEY].report(fa_checkpoint.path, fa_thresholds)
