"""Shared fixtures: a small MNIST-1D and small BP / DFA / frozen bundles trained once per session."""

from __future__ import annotations

# pytester's in-process runs drop the modules first imported inside them, and numpy's C
# extensions (reached from mnist1d through scipy) cannot be loaded twice in one process:
# import them here, outside every run.
import mnist1d.data  # noqa: F401
import pytest

# the realisation (seed, threads) of the tests whose training runs are chaotic: seed 42 on one
# thread, or each one PYTEST_FA_REALISATIONS lists (the slow tier's sweep)
from pytest_fa.pitfalls import fixtures as pitfall_fixtures
from pytest_fa.pitfalls.fixtures import fa_realisation  # noqa: F401


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # under --fa-pitfalls the pitfall suite's own hook parametrises these tests already
    if not metafunc.config.pluginmanager.has_plugin("fa-pitfalls"):
        pitfall_fixtures.pytest_generate_tests(metafunc)


SMALL_SAMPLES = 6000  # 1200 test samples: room for 8 eval batches of 128
SMALL_ARCH = {"d": 32, "depth": 4}
SMALL_EPOCHS = 2


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every cache the package writes goes to a session temp folder, not the user's home.
    Generated MNIST-1D sets, a function of their arguments alone, are shared by the test
    sessions of this user (the default tier, the slow tier and the sweep's subprocess each
    generated the 60 000-sample set, about 18 s, again)."""
    import os
    import tempfile
    from pathlib import Path

    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.mktemp("fa-cache")
        shared = Path(tempfile.gettempdir()) / f"pytest-fa-tests-mnist1d-{os.getuid()}"
        shared.mkdir(mode=0o700, exist_ok=True)
        (path / "mnist1d").symlink_to(shared, target_is_directory=True)
        mp.setenv("PYTEST_FA_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread while a module runs: small matmuls do not spin-wait on a busy
    machine, and chaotic training runs (DFA at a high learning rate) do not depend on the
    thread count. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_data(isolated_cache):
    from pytest_fa.training.data import load_dataset

    return load_dataset("mnist1d", num_samples=SMALL_SAMPLES)


def _train(small_data, method, tmp_path_factory):
    from pytest_fa.training.checkpoint import save_bundle
    from pytest_fa.training.trainer import train

    result = train(small_data, method, arch_config=SMALL_ARCH, epochs=SMALL_EPOCHS, seed=42, device="cpu")
    path = tmp_path_factory.mktemp("bundles") / f"{method}_s42.pt"
    save_bundle(path, result.bundle)
    return result, path


@pytest.fixture(scope="session")
def bp_trained(small_data, tmp_path_factory):
    """``(TrainResult, path)`` of a small BP bundle."""
    return _train(small_data, "bp", tmp_path_factory)


@pytest.fixture(scope="session")
def dfa_trained(small_data, tmp_path_factory):
    """``(TrainResult, path)`` of a small DFA bundle."""
    return _train(small_data, "dfa", tmp_path_factory)


@pytest.fixture(scope="session")
def bp_bundle(bp_trained):
    return bp_trained[1]


@pytest.fixture(scope="session")
def dfa_bundle(dfa_trained):
    return dfa_trained[1]
