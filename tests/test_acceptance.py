"""The main job at full size: the project's trainer with its defaults on the embedded
MNIST-1D, then the plugin on both checkpoints. BP must be trustworthy, DFA walked back
with (a) and (d), and the frozen baseline must sit between them.

This is the slowest module of the suite (about three minutes on two CPU cores): it runs in
the slow tier, `pytest -m slow`.
"""

from __future__ import annotations

import json

import pytest
import torch

from pytest_fa.training.checkpoint import load_checkpoint, save_bundle
from pytest_fa.training.data import dataset_from_spec, eval_batches, load_dataset
from pytest_fa.training.trainer import train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_bundles(tmp_path_factory):
    data = load_dataset("mnist1d")
    assert len(data.x_train) == 48000 and len(data.x_test) == 12000
    folder = tmp_path_factory.mktemp("main-job")
    paths = {}
    for method in ("bp", "dfa"):
        result = train(data, method, device="cpu")
        assert result.bundle.arch_config == {"input_shape": [40], "num_classes": 10, "d": 256, "depth": 4}
        paths[method] = save_bundle(folder / f"{method}_s42.pt", result.bundle)
    return paths


@pytest.fixture(scope="module")
def protocol_json(default_bundles, tmp_path_factory):
    folder = tmp_path_factory.mktemp("protocol")
    out = folder / "report.json"
    args = [
        "-q", "-p", "no:cacheprovider", str(folder),
        f"--fa-checkpoint={default_bundles['bp']}",
        f"--fa-checkpoint={default_bundles['dfa']}",
        f"--fa-report-json={out}",
    ]
    exit_code = pytest.main(args)
    assert exit_code == pytest.ExitCode.TESTS_FAILED  # DFA's walk-back fails its items
    return {r["context"]["method"]: r for r in json.loads(out.read_text())["reports"]}


def test_bp_is_trustworthy(protocol_json):
    bp = protocol_json["bp"]
    assert bp["verdict"] == "trustworthy", bp["verdict"]


def test_dfa_is_walked_back_with_a_and_d(protocol_json):
    dfa = protocol_json["dfa"]
    assert {"a", "d"} <= set(dfa["fired"]), dfa["verdict"]
    assert dfa["verdict"].startswith("needs walk-back")


def test_frozen_baseline_sits_between_dfa_and_bp(protocol_json):
    bp, dfa = protocol_json["bp"]["accuracy"], protocol_json["dfa"]["accuracy"]
    assert bp["frozen_baseline"] == dfa["frozen_baseline"]
    assert dfa["headline"] < dfa["frozen_baseline"] < bp["headline"]


def test_report_numbers_agree_with_an_independent_computation(protocol_json, default_bundles):
    """(a) and (b) recomputed from DESIGN.md's definitions with plain torch."""
    report = protocol_json["dfa"]
    loaded = load_checkpoint(default_bundles["dfa"])
    data = dataset_from_spec(loaded.bundle.data)
    model = loaded.model.eval()
    h_norms, g_norms = [], []
    for x, y in eval_batches(data, 8, 128, seed=0):
        logits, hiddens = model(x, return_hidden=True)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="mean")
        grads = torch.autograd.grad(loss, hiddens)
        h_norms.append(torch.stack([h.detach().double().norm(dim=1) for h in hiddens]))
        g_norms.append(torch.stack([g.double().norm(dim=1) for g in grads]))
    h_med = torch.cat(h_norms, dim=1).median(dim=1).values
    g_med = torch.cat(g_norms, dim=1).median(dim=1).values
    growth = (h_med[1:] / h_med[:-1]).max().item()
    assert report["diagnostics"]["a"]["value"] == pytest.approx(growth, rel=1e-5)
    assert report["layers"][-1]["g_norm"] == pytest.approx(g_med[-1].item(), rel=1e-5)
    assert report["measurement"] == {
        "batch_size": 128, "num_batches": 8, "samples": 1024, "dtype": "float32",
        "device": "cpu", "mode": "eval", "layout": "vector", "loss": "batch-mean cross-entropy",
    }
