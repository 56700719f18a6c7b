"""Tests for pytest_fa.training.checkpoint: bundles, plain state dicts with a model factory, and every
bad input, each of which must raise a specific error whose message says what to do."""

from __future__ import annotations

import dataclasses
import importlib
import io
import math
import os
import pickle
import random
import re
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from pytest_fa import protocol
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.core.report import diagnose
from pytest_fa.errors import CheckpointError, DataError, FeedbackError, ModelInterfaceError, NonFiniteError
from pytest_fa.models import ARCHITECTURES, ResMLP, build_model
from pytest_fa.protocol import ProtocolRunner, ProtocolSettings
from pytest_fa.training.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    Bundle,
    load_bundle,
    load_checkpoint,
    save_bundle,
)
from pytest_fa.training.data import eval_batches
from test_adapter import FACTORY as SEQUENTIAL_SOURCE  # a Sequential without return_hidden

# The conftest bundles: ResMLP d=32, L=4 on MNIST-1D (40 inputs, 10 classes).
INPUT_SHAPE = [40]
CLASSES = 10
WIDTH = 32
DEPTH = 4
REMEDY = re.compile(r"re-?save|save_bundle|pass setting `model|check", re.IGNORECASE)

FACTORY_SOURCE = f"""
from pytest_fa.models import build_model

def build():
    return build_model("resmlp", input_shape={INPUT_SHAPE}, num_classes={CLASSES}, d={WIDTH}, depth={DEPTH})
"""


# -- helpers --------------------------------------------------------------------------------


def small_resmlp(seed: int = 0) -> ResMLP:
    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=INPUT_SHAPE, num_classes=CLASSES, d=WIDTH, depth=DEPTH)


def assert_state_equal(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def assert_bundles_equal(a: Bundle, b: Bundle) -> None:
    for f in dataclasses.fields(Bundle):
        if f.name in ("state_dict", "feedback", "aux"):
            continue
        assert getattr(a, f.name) == getattr(b, f.name), f.name
    assert_state_equal(a.state_dict, b.state_dict)
    assert len(a.feedback) == len(b.feedback)
    for x, y in zip(a.feedback, b.feedback):
        assert torch.equal(x, y)
    assert a.aux.keys() == b.aux.keys()


def edited(dfa_bundle: Path, tmp_path: Path, edit, name: str = "edited.pt") -> Path:
    """Load the conftest DFA bundle, apply ``edit(bundle)``, save it under tmp_path."""
    bundle = load_bundle(dfa_bundle)
    edit(bundle)
    return save_bundle(tmp_path / name, bundle)


def save_payload(tmp_path: Path, payload, name: str = "payload.pt") -> Path:
    path = tmp_path / name
    torch.save(payload, path)
    return path


def error_of(exc_type, fn, *args, **kwargs) -> str:
    """The message of the ``exc_type`` that ``fn(*args, **kwargs)`` raises, with the paths
    passed in replaced by ``<path>`` (tmp_path names contain the test name, whose words
    must not satisfy the phrase checks)."""
    with pytest.raises(exc_type) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    for arg in args:
        if isinstance(arg, (str, Path)) and str(arg):
            message = message.replace(str(arg), "<path>")
    return message


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    """``write(source) -> module name``: a fresh importable module in tmp_path."""
    folder = tmp_path / "factories"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    created = []

    def write(source: str) -> str:
        name = f"fa_factory_{uuid.uuid4().hex[:10]}"
        (folder / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        created.append(name)
        return name

    yield write
    for name in created:
        sys.modules.pop(name, None)


@pytest.fixture
def plain_state_dict(tmp_path):
    """A ResMLP state dict saved with plain ``torch.save``; returns ``(path, model)``."""
    model = small_resmlp(seed=7)
    path = tmp_path / "plain.pt"
    torch.save(model.state_dict(), path)
    return path, model


# -- bundles: round trip ---------------------------------------------------------------------


def test_bundle_round_trip_of_a_trained_bundle(dfa_trained, tmp_path):
    result, path = dfa_trained
    loaded = load_bundle(path)
    assert_bundles_equal(loaded, result.bundle)
    assert loaded.method == "dfa" and loaded.arch == "resmlp"
    assert len(loaded.feedback) == DEPTH + 1
    assert [tuple(b.shape) for b in loaded.feedback] == [(CLASSES, WIDTH)] * (DEPTH + 1)
    assert loaded.headline_acc == result.bundle.metrics["test_acc"]
    # save again and read back: nothing is lost or reordered
    again = load_bundle(save_bundle(tmp_path / "again.pt", loaded))
    assert_bundles_equal(again, loaded)
    assert not list(tmp_path.glob("*.tmp")), "save_bundle leaves no temporary file behind"


def test_bundle_is_readable_with_weights_only(dfa_trained):
    result, path = dfa_trained
    payload = torch.load(path, weights_only=True)
    assert payload["format"] == FORMAT and payload["format_version"] == FORMAT_VERSION
    assert payload["arch"] == "resmlp" and payload["method"] == "dfa"
    assert isinstance(payload["feedback"], list) and len(payload["feedback"]) == DEPTH + 1
    assert_state_equal(payload["state_dict"], result.bundle.state_dict)


def test_save_bundle_refuses_objects_weights_only_cannot_read(dfa_bundle, tmp_path):
    bundle = load_bundle(dfa_bundle)
    bundle.metrics["note"] = Payload()
    target = tmp_path / "unsafe_bundle.pt"
    message = error_of(CheckpointError, save_bundle, target, bundle)
    assert "weights_only" in message and "tensors, numbers, strings, lists and dicts" in message
    assert not target.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_bundle_that_cannot_be_written_is_a_clear_error(dfa_bundle, tmp_path):
    from pytest_fa.core.files import WriteError

    blocker = tmp_path / "afile"  # a file where the bundle's folder goes: refused as root too
    blocker.write_text("")
    message = error_of(WriteError, save_bundle, blocker / "b.pt", load_bundle(dfa_bundle))
    assert message.startswith("cannot write <path>: ") and "nothing was written" in message


def test_load_checkpoint_of_dfa_bundle_restores_model_and_feedback(dfa_trained):
    result, path = dfa_trained
    loaded = load_checkpoint(path)
    assert isinstance(loaded.model, ResMLP)
    assert_state_equal(loaded.model.state_dict(), result.model.state_dict())
    assert loaded.method == "dfa" and loaded.bundle is not None
    assert loaded.label == Path(path).name
    assert len(loaded.state.feedback) == len(result.state.feedback) == DEPTH + 1
    for got, trained in zip(loaded.state.feedback, result.state.feedback):
        assert torch.equal(got, trained.cpu())
    assert loaded.state.config == result.bundle.method_config == {"penalty": 0.0}


def test_bundle_of_a_method_without_feedback_loads_without_it(dfa_bundle, tmp_path):
    def to_bp(b):
        b.method, b.method_config, b.feedback = "bp", {}, []

    path = edited(dfa_bundle, tmp_path, to_bp)
    loaded = load_checkpoint(path)
    assert loaded.method == "bp" and loaded.state.feedback == []


# -- files that are not checkpoints -----------------------------------------------------------


def test_missing_file(tmp_path):
    message = error_of(CheckpointError, load_checkpoint, tmp_path / "nope.pt")
    assert "does not exist" in message and "check the path" in message


def test_directory(tmp_path):
    message = error_of(CheckpointError, load_checkpoint, tmp_path)
    assert "is a directory" in message and ".pt file" in message


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(random.Random(0).randbytes(4096), id="random-bytes"),
        pytest.param(random.Random(1).randbytes(300), id="random-bytes-2"),
        pytest.param(random.Random(2).randbytes(100), id="random-bytes-3"),
        pytest.param(b"", id="empty"),
        pytest.param(b"epochs: 20\nlr: 0.001\n" * 20, id="text-file"),
    ],
)
def test_corrupt_file_is_reported_as_corrupt(tmp_path, content):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(content)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "<path>" in message and "corrupt" in message


@pytest.mark.parametrize("content", [random.Random(0).randbytes(4096), b"\0" * 4096], ids=["random", "zeros"])
def test_a_file_torch_cannot_read_safely_never_gets_the_advice_to_load_it_unsafely(tmp_path, content):
    path = tmp_path / "noise.pt"
    path.write_bytes(content)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "is not a checkpoint pytest-fa can read safely" in message and "corrupt or truncated" in message
    assert "weights_only" not in message and "arbitrary code execution" not in message


@pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/dev/zero").exists(), reason="needs a FIFO and /dev/zero")
def test_a_pipe_or_device_is_not_read_as_a_checkpoint(tmp_path):
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)  # no writer: opening it would block
    for path in (pipe, Path("/dev/zero")):
        message = error_of(CheckpointError, load_checkpoint, path)
        assert message == "checkpoint <path> is not a regular file (a pipe, socket or device); point at the .pt file"


@pytest.mark.parametrize("fraction", [0.002, 0.3, 0.9, 0.999])
def test_truncated_bundle_is_reported_as_corrupt(dfa_bundle, tmp_path, fraction):
    data = Path(dfa_bundle).read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "corrupt or truncated" in message


class Payload:
    """A class defined in the test: unpickling it needs code from this module."""

    def __init__(self):
        self.weights = torch.zeros(3)


def _touch(path: str) -> str:
    Path(path).write_text("code ran")
    return path


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda: Payload(), id="object"),
        pytest.param(lambda: {"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, id="dict-with-object"),
    ],
)
def test_torch_saved_custom_object_is_refused_as_unsafe(tmp_path, payload):
    path = save_payload(tmp_path, payload())
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "refuses" in message and "unsafe" in message
    assert "save_bundle" in message or "state_dict()" in message


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("proto", [2, pickle.DEFAULT_PROTOCOL])
def test_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path, proto):
    marker = tmp_path / "marker.txt"
    data = pickle.dumps(RunsCode(marker), protocol=proto)
    path = tmp_path / "evil.pt"
    path.write_bytes(data)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "refuses" in message and "unsafe" in message
    assert not marker.exists(), "loading the checkpoint executed code from the pickle"
    # control: the payload is live, an unguarded pickle.loads does run it
    pickle.loads(data)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize(
    "payload, kind",
    [
        pytest.param([torch.zeros(2)], "list", id="list"),
        pytest.param(torch.zeros(3), "Tensor", id="tensor"),
        pytest.param(3.5, "float", id="number"),
    ],
)
def test_payload_that_is_not_a_dict(tmp_path, payload, kind):
    path = save_payload(tmp_path, payload)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert f"holds a {kind}" in message and "expected a pytest-fa bundle or a state dict" in message


# -- malformed bundles -------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 0, None])
def test_wrong_format_version(dfa_bundle, tmp_path, version):
    payload = load_bundle(dfa_bundle).to_payload()
    payload["format_version"] = version
    path = save_payload(tmp_path, payload)
    for loader in (load_bundle, load_checkpoint):
        message = error_of(CheckpointError, loader, path)
        assert f"version {version!r}" in message
        assert "Upgrade pytest-fa or re-save the bundle" in message


@pytest.mark.parametrize("version", ["1", 1.0, True])
def test_a_format_version_that_is_not_an_integer_is_named_as_such(dfa_bundle, tmp_path, version):
    payload = load_bundle(dfa_bundle).to_payload()
    payload["format_version"] = version
    path = save_payload(tmp_path, payload)
    message = error_of(CheckpointError, load_bundle, path)
    assert f"records format_version={version!r} (a {type(version).__name__})" in message
    assert "must be the integer 1" in message and "save_bundle" in message
    assert "this pytest-fa reads version" not in message


@pytest.mark.parametrize("key", ["arch", "state_dict", "method", "data"])
def test_bundle_missing_a_required_key(dfa_bundle, tmp_path, key):
    payload = load_bundle(dfa_bundle).to_payload()
    del payload[key]
    path = save_payload(tmp_path, payload)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert repr(key) in message
    assert REMEDY.search(message), f"the message does not say what to do: {message}"


def test_unknown_architecture(dfa_bundle, tmp_path):
    path = edited(dfa_bundle, tmp_path, lambda b: setattr(b, "arch", "resnet9000"))
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "resnet9000" in message and "setting `model=package.module:build`" in message
    for name in ARCHITECTURES:
        assert name in message


def test_custom_architecture_without_factory(dfa_bundle, tmp_path):
    path = edited(dfa_bundle, tmp_path, lambda b: setattr(b, "arch", "custom"))
    assert "setting `model=package.module:build`" in error_of(CheckpointError, load_checkpoint, path)


def test_unknown_method(dfa_bundle, tmp_path):
    path = edited(dfa_bundle, tmp_path, lambda b: setattr(b, "method", "forward-forward"))
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "forward-forward" in message and "bp, credit_bridge, dfa, ep, fa, frozen, state_bridge" in message


def test_method_config_the_method_does_not_take(dfa_bundle, tmp_path):
    path = edited(dfa_bundle, tmp_path, lambda b: b.method_config.update(learning_rate=0.1))
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "learning_rate" in message and "dfa" in message


def _drop(key):
    return lambda sd: sd.pop(key)


def _add(key):
    return lambda sd: sd.__setitem__(key, torch.zeros(3))


def _reshape(key, shape):
    return lambda sd: sd.__setitem__(key, torch.zeros(shape))


@pytest.mark.parametrize(
    "edit, phrases",
    [
        pytest.param(_drop("out_head.bias"), ["missing keys", "out_head.bias"], id="missing-key"),
        pytest.param(_add("blocks.4.w1.weight"), ["unexpected keys", "blocks.4.w1.weight"], id="extra-key"),
        pytest.param(
            _reshape("embed.weight", (WIDTH, 41)),
            ["shape mismatch", "embed.weight", f"checkpoint ({WIDTH}, 41)", f"model ({WIDTH}, 40)"],
            id="wrong-shape",
        ),
    ],
)
def test_state_dict_that_does_not_match(dfa_bundle, tmp_path, edit, phrases):
    path = edited(dfa_bundle, tmp_path, lambda b: edit(b.state_dict))
    message = error_of(CheckpointError, load_checkpoint, path)
    for phrase in phrases:
        assert phrase in message
    assert "does not match ResMLP" in message and "Check the architecture config" in message


def test_state_dict_mismatch_lists_every_kind_at_once(dfa_bundle, tmp_path):
    def edit(b):
        _drop("blocks.0.w2.bias")(b.state_dict)
        _add("surplus")(b.state_dict)
        _reshape("out_head.weight", (CLASSES + 1, WIDTH))(b.state_dict)

    message = error_of(CheckpointError, load_checkpoint, edited(dfa_bundle, tmp_path, edit))
    for phrase in ("blocks.0.w2.bias", "surplus", "out_head.weight", f"({CLASSES + 1}, {WIDTH})"):
        assert phrase in message


@pytest.mark.parametrize(
    "state_dict",
    [
        pytest.param(lambda sd: list(sd.values()), id="list-of-tensors"),
        pytest.param(lambda sd: {**sd, "embed.weight": [[0.0] * 40] * WIDTH}, id="non-tensor-value"),
    ],
)
def test_state_dict_of_the_wrong_type(dfa_bundle, tmp_path, state_dict):
    path = edited(dfa_bundle, tmp_path, lambda b: setattr(b, "state_dict", state_dict(b.state_dict)))
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "state dict" in message


# -- feedback matrices -------------------------------------------------------------------------


def test_dfa_bundle_without_feedback(dfa_bundle, tmp_path):
    path = edited(dfa_bundle, tmp_path, lambda b: b.feedback.clear())
    message = error_of(FeedbackError, load_checkpoint, path)
    assert "'dfa'" in message and "carries none" in message
    assert "cos(BP, BP) = 1" in message and "Re-save the bundle with the training B_l" in message


def _set_feedback(index, make):
    return lambda b: b.feedback.__setitem__(index, make(b.feedback[index]))


def _with_nonfinite(value):
    def make(b):
        b = b.clone()
        b[3, 5] = value
        return b

    return make


@pytest.mark.parametrize(
    "edit, phrases",
    [
        pytest.param(lambda b: b.feedback.pop(), [f"expected {DEPTH + 1} feedback matrices", f"found {DEPTH}"],
                     id="one-missing"),
        pytest.param(lambda b: b.feedback.append(b.feedback[0].clone()),
                     [f"expected {DEPTH + 1}", f"found {DEPTH + 2}"], id="one-too-many"),
        pytest.param(_set_feedback(2, lambda b: torch.randn(CLASSES, WIDTH - 1)),
                     ["B_2", f"({CLASSES}, {WIDTH - 1})", f"expected ({CLASSES}, {WIDTH})"], id="wrong-shape"),
        pytest.param(_set_feedback(1, lambda b: b.T.contiguous()),
                     ["B_1", "transposed", f"({CLASSES}, {WIDTH})"], id="transposed"),
        pytest.param(_set_feedback(3, _with_nonfinite(float("nan"))), ["B_3", "NaN"], id="nan"),
        pytest.param(_set_feedback(0, _with_nonfinite(float("inf"))), ["B_0", "Inf"], id="inf"),
        pytest.param(_set_feedback(4, lambda b: b.tolist()), ["B_4", "not a tensor"], id="not-a-tensor"),
    ],
)
def test_bad_feedback_matrices(dfa_bundle, tmp_path, edit, phrases):
    path = edited(dfa_bundle, tmp_path, edit)
    message = error_of(FeedbackError, load_checkpoint, path)
    for phrase in phrases:
        assert phrase in message


# -- non-finite weights ------------------------------------------------------------------------


def _poison(key, value):
    def edit(b):
        tensor = b.state_dict[key].clone()
        tensor.view(-1)[0] = value
        b.state_dict[key] = tensor

    return edit


@pytest.mark.parametrize(
    "key, value", [("blocks.2.w1.weight", float("nan")), ("out_head.bias", float("inf"))]
)
def test_non_finite_weights_are_named_when_diagnosing(dfa_bundle, small_data, tmp_path, key, value):
    path = edited(dfa_bundle, tmp_path, _poison(key, value))
    loaded = load_checkpoint(path)
    batches = eval_batches(small_data, 8, 128)
    message = error_of(NonFiniteError, diagnose, loaded.model, batches)
    assert f"`{key}`" in message and "last finite checkpoint" in message
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5))
    message = error_of(NonFiniteError, runner.report, str(path))
    assert f"`{key}`" in message


# -- plain state dicts and model factories ---------------------------------------------------


def test_plain_state_dict_without_factory(plain_state_dict):
    path, _ = plain_state_dict
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "plain state dict" in message and "setting `model=package.module:build`" in message
    message = error_of(CheckpointError, load_bundle, path)
    assert "not a pytest-fa bundle" in message and "setting `model=package.module:build`" in message


def test_plain_state_dict_with_factory_callable(plain_state_dict):
    path, model = plain_state_dict
    loaded = load_checkpoint(path, factory=lambda: small_resmlp(seed=123))
    assert_state_equal(loaded.model.state_dict(), model.state_dict())
    assert loaded.bundle is None and loaded.method is None
    assert loaded.state.feedback == [] and loaded.state.aux == {}


def test_plain_state_dict_with_factory_string(plain_state_dict, factory_module):
    path, model = plain_state_dict
    name = factory_module(FACTORY_SOURCE)
    loaded = load_checkpoint(path, factory=f"{name}:build")
    assert isinstance(loaded.model, ResMLP)
    assert_state_equal(loaded.model.state_dict(), model.state_dict())


@pytest.mark.parametrize("spec", ["nocolon", ":build", "some.module:", "", ":"])
def test_malformed_factory_string(plain_state_dict, spec):
    path, _ = plain_state_dict
    message = error_of(CheckpointError, load_checkpoint, path, factory=spec)
    assert "must look like package.module:build" in message


def test_factory_module_that_does_not_exist(plain_state_dict):
    path, _ = plain_state_dict
    message = error_of(CheckpointError, load_checkpoint, path, factory="fa_no_such_module_xyz:build")
    assert "cannot import 'fa_no_such_module_xyz'" in message


def test_factory_attribute_that_does_not_exist(plain_state_dict, factory_module):
    path, _ = plain_state_dict
    name = factory_module(FACTORY_SOURCE)
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:make_it")
    assert f"module {name!r} has no 'make_it'" in message


def test_factory_that_is_not_callable(plain_state_dict, factory_module):
    path, _ = plain_state_dict
    name = factory_module("build = 42\n")
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:build")
    assert "is not callable" in message


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("def build():\n    return {'w': 1}\n", id="dict"),
        pytest.param("def build():\n    return None\n", id="none"),
    ],
)
def test_factory_returning_a_non_module(plain_state_dict, factory_module, source):
    path, _ = plain_state_dict
    name = factory_module(source)
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:build")
    assert "not an nn.Module" in message


def test_factory_callable_returning_a_non_module(plain_state_dict):
    path, _ = plain_state_dict
    message = error_of(CheckpointError, load_checkpoint, path, factory=lambda: "a model")
    assert "returned str, not an nn.Module" in message


def test_factory_that_needs_arguments(plain_state_dict, factory_module):
    path, _ = plain_state_dict
    name = factory_module("def build(width):\n    raise AssertionError('never called')\n")
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:build")
    assert "factory rejected" in message


def test_factory_building_another_architecture(plain_state_dict):
    path, _ = plain_state_dict
    other = lambda: build_model("resmlp", input_shape=INPUT_SHAPE, num_classes=CLASSES, d=WIDTH * 2, depth=DEPTH)  # noqa: E731
    message = error_of(CheckpointError, load_checkpoint, path, factory=other)
    assert "shape mismatch" in message and "embed.weight" in message and "setting `model`" in message


# -- the protocol runner on a plain state dict and on a bundle ---------------------------------


@pytest.fixture
def small_default_data(small_data, monkeypatch):
    """The runner builds a plain state dict's data with ``load_dataset(name)`` and the DEFAULT
    config (60 000 MNIST-1D samples, about a minute to generate); serve the small set instead."""
    calls = []

    def fake_load_dataset(name, *, root=None, **config):
        calls.append((name, root, config))
        return small_data

    monkeypatch.setattr(protocol, "load_dataset", fake_load_dataset)
    return calls


def _plain_runner(name, **overrides):
    return ProtocolRunner(
        ProtocolSettings(
            model_factory=f"{name}:build", data="mnist1d", device="cpu", batch_size=128, eval_batches=8,
            **overrides,
        )
    )


def test_runner_on_plain_state_dict_reports_gamma_unavailable_and_is_incomplete(
    plain_state_dict, factory_module, small_default_data, small_data
):
    path, model = plain_state_dict
    name = factory_module(FACTORY_SOURCE)
    report = _plain_runner(name).report(str(path))
    assert [call[0] for call in small_default_data] == ["mnist1d"]

    # Γ: unavailable, with the reason, never a fallback number
    assert report.credit_status.startswith("unavailable")
    assert "plain state dict" in report.credit_status
    assert len(report.layers) == DEPTH + 1
    assert all(row.gamma is None for row in report.layers)
    assert all(row.gamma_status.startswith("unavailable") for row in report.layers)
    assert report.to_dict()["gamma"]["mean_all_layers"] is None

    # (a), (b), (c) evaluated, and equal to a direct diagnosis on the same batches
    direct = diagnose(model.eval(), eval_batches(small_data, 8, 128, seed=0))
    for key in "abc":
        result = report.diagnostics[key]
        assert result.evaluated and math.isfinite(result.value)
        assert result.value == pytest.approx(direct.diagnostics[key].value, rel=1e-9)
    assert not report.diagnostics["a"].fires and not report.diagnostics["b"].fires  # an untrained net

    # (d): no frozen info for a plain state dict → not evaluated, verdict incomplete
    d = report.diagnostics["d"]
    assert not d.evaluated and d.value is None
    assert "setting `frozen_acc=ACC`" in d.detail
    assert report.missing == ["d"]
    assert report.verdict.startswith("incomplete") and "(d)" in report.verdict
    assert not report.trustworthy and "trustworthy" not in report.verdict


def test_runner_on_plain_state_dict_with_frozen_acc_evaluates_d(
    plain_state_dict, factory_module, small_default_data
):
    path, _ = plain_state_dict
    name = factory_module(FACTORY_SOURCE)
    report = _plain_runner(name, frozen_acc=0.05).report(str(path))
    d = report.diagnostics["d"]
    assert d.evaluated
    assert report.frozen_acc == 0.05
    assert d.value == pytest.approx(100 * (report.headline_acc - 0.05))
    assert d.fires == (d.value < report.thresholds.frozen_margin_pp)
    assert not report.verdict.startswith("incomplete")
    assert all(row.gamma is None for row in report.layers)


def test_dfa_bundle_gamma_round_trip(dfa_trained, small_data):
    result, path = dfa_trained
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.1, batch_size=128, eval_batches=8))
    report = runner.report(str(path))
    assert report.credit_status == "computed"

    batches = eval_batches(small_data, 8, 128, seed=0)
    # the runner rebuilt the very same eval batches from the bundle's data spec
    for (x, y), (rx, ry) in zip(batches, runner.eval_batches(str(path))):
        assert torch.equal(x, rx) and torch.equal(y, ry)

    direct = diagnose(result.model, batches, credit=DFACredit(result.state.feedback))
    assert len(report.layers) == len(direct.layers) == DEPTH + 1
    assert all(g is not None for g in direct.gamma_per_layer)
    for from_file, in_memory in zip(report.gamma_per_layer, direct.gamma_per_layer):
        assert from_file == pytest.approx(in_memory, rel=1e-9, abs=1e-12)

    # the comparison can fail: other B's give other Γ
    reseeded = init_dfa_feedback(CLASSES, [WIDTH] * (DEPTH + 1), torch.Generator().manual_seed(999))
    other = diagnose(result.model, batches, credit=DFACredit(reseeded))
    assert max(abs(a - b) for a, b in zip(other.gamma_per_layer, direct.gamma_per_layer)) > 1e-3


def test_factory_that_raises_names_the_users_code(plain_state_dict, factory_module):
    path, _ = plain_state_dict
    name = factory_module("def build():\n    raise RuntimeError('no GPU kernels here')\n")
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:build")
    assert f"your model factory `{name}:build` (setting `model`) raised RuntimeError: no GPU kernels here" in message


def test_factory_that_exits_is_reported_and_an_interrupt_still_interrupts(plain_state_dict, factory_module):
    path, _ = plain_state_dict
    name = factory_module("import sys\ndef build():\n    sys.exit('bad width')\n"
                          "def stop():\n    raise KeyboardInterrupt\n")
    message = error_of(CheckpointError, load_checkpoint, path, factory=f"{name}:build")
    assert f"your model factory `{name}:build` (setting `model`) raised SystemExit: bad width" in message
    with pytest.raises(KeyboardInterrupt):
        load_checkpoint(path, factory=f"{name}:stop")


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("epochs", -3, "epochs=-3"), ("epochs", 2.5, "epochs=2.5"), ("epochs", True, "epochs=True"),
        ("test_acc", "0.95", "test_acc='0.95'"), ("test_acc", 95.0, "test_acc=95.0"),
        ("test_acc", float("nan"), "test_acc=nan"),
    ],
)
def test_a_bundle_with_an_impossible_record_is_refused(bp_bundle, tmp_path, field, value, phrase):
    payload = torch.load(bp_bundle, weights_only=True)
    if field == "epochs":
        payload["epochs"] = value
    else:
        payload["metrics"]["test_acc"] = value
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert phrase in message and ("whole number" in message or "fraction in [0, 1]" in message)


@pytest.mark.parametrize(
    "planned, phrase",
    [
        (2, "records epochs=10 but metrics.planned_epochs=2: a run cannot train more epochs than it planned"),
        (-1, "records metrics.planned_epochs=-1; a training budget is a whole number ≥ 1"),
        (2.5, "records metrics.planned_epochs=2.5; a training budget is a whole number ≥ 1"),
        ("20", "records metrics.planned_epochs='20'; a training budget is a whole number ≥ 1"),
    ],
)
def test_a_bundle_whose_budget_does_not_add_up_is_refused(bp_bundle, tmp_path, planned, phrase):
    """The frozen baseline is trained on the planned schedule and stopped at ``epochs``: a
    budget of 10 epochs out of 2 planned cannot be matched (and was described as neither)."""
    payload = torch.load(bp_bundle, weights_only=True)
    payload["epochs"], payload["metrics"]["planned_epochs"] = 10, planned
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert f"<path> {phrase}" in message


def test_a_bundle_with_metrics_that_are_not_a_dict_is_refused(bp_bundle, tmp_path):
    payload = torch.load(bp_bundle, weights_only=True)
    payload["metrics"] = [0.9]
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    assert "records metrics of type list; metrics is a dict" in error_of(CheckpointError, load_checkpoint, path)


def test_a_bundle_that_stopped_before_its_planned_epochs_loads(bp_bundle, tmp_path):
    payload = torch.load(bp_bundle, weights_only=True)
    payload["epochs"], payload["metrics"]["planned_epochs"] = 2, 5
    path = tmp_path / "early.pt"
    torch.save(payload, path)
    assert load_checkpoint(path).bundle.epochs == 2


# -- fields of the wrong type ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, phrase",
    [
        ("format_version", torch.tensor([1, 1]), "records format_version=tensor([1, 1]) (a Tensor); the format version must be the integer 1"),
        ("format_version", True, "records format_version=True (a bool); the format version must be the integer 1"),
        ("arch", ["resmlp"], "records arch=['resmlp']; arch is a name (a string)"),
        ("method", {"dfa": 1}, "records method={'dfa': 1}; method is a name (a string)"),
        ("arch_config", "d=32", "records arch_config of type str; arch_config is a dict"),
        ("arch_config", {"d": 32, 3: 4}, "records arch_config with the key 3; arch_config holds string keys"),
        ("method_config", [("penalty", 0.0)], "records method_config of type list; method_config is a dict"),
        ("recipe", "adamw", "records recipe of type str; recipe is a dict"),
        ("aux", 3, "records aux of type int; aux is a dict"),
        ("data", None, "records data of type NoneType; data is a dict"),
        ("data", {"name": "mnist1d", "config": {3: 1}, "preprocessing": {}},
         "records data with the key 3; data holds JSON"),
        ("data", {"name": "mnist1d", "config": {}, "preprocessing": {"mean": torch.zeros(1)}},
         "records data with the value tensor([0.]); data holds JSON"),
        ("feedback", torch.zeros(5, CLASSES, WIDTH), "records feedback of type Tensor; feedback is a list of tensors"),
        ("seed", "abc", "records seed='abc'; a seed is a whole number torch can seed with"),
        ("seed", [1], "records seed=[1]; a seed is a whole number"),
        ("seed", 2**64, f"records seed={2**64}; a seed is a whole number"),
    ],
)
def test_a_bundle_field_of_the_wrong_type_is_refused(dfa_bundle, tmp_path, field, value, phrase):
    """Each field has the type save_bundle writes; another one raised TypeError, ValueError or
    RuntimeError deep in the loader, or reached the report (a seed that is a list or a tensor
    broke its JSON and the seed table)."""
    payload = torch.load(dfa_bundle, weights_only=True)
    payload[field] = value
    path = save_payload(tmp_path, payload)
    message = error_of(CheckpointError, load_checkpoint, path)
    assert f"<path> {phrase}" in message
    assert REMEDY.search(message) or "Upgrade pytest-fa" in message, message


@pytest.mark.parametrize("data_setting", [None, "mnist1d"])
def test_the_runner_refuses_a_malformed_bundle_before_reading_its_data(dfa_bundle, tmp_path, data_setting):
    """A bundle without a data spec was diagnosed on mnist1d (or on --fa-data) as if it were
    a plain state dict; a data spec that is not a dict raised AttributeError under --fa-data."""
    for number, spec in enumerate([None, ["mnist1d"]]):
        payload = torch.load(dfa_bundle, weights_only=True)
        payload["data"] = spec
        path = save_payload(tmp_path, payload, f"bad{number}.pt")
        runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5, data=data_setting))
        message = error_of(CheckpointError, runner.report, str(path))
        assert f"<path> records data of type {type(spec).__name__}; data is a dict" in message


@pytest.mark.parametrize(("key", "value"), [("name", "synthetic"), ("root", "/etc"), ("num_samples", 2**70)])
def test_the_runner_names_the_bundle_whose_data_spec_cannot_be_rebuilt(dfa_bundle, tmp_path, key, value):
    """A data spec config holding 'name' or 'root' raised a raw TypeError (the keys clashed with
    load_dataset's arguments); one asking for 2**70 samples started generating them for ever."""
    payload = torch.load(dfa_bundle, weights_only=True)
    payload["data"]["config"][key] = value
    path = save_payload(tmp_path, payload)
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5))
    message = error_of(DataError, runner.report, str(path))
    assert message.startswith("<path>: the data set its data spec records cannot be rebuilt: "), message
    if key == "num_samples":
        assert f"num_samples must be at most 10000000, got {value}" in message
    else:
        assert f"unknown config key(s) {key!r} for 'mnist1d'; accepted keys: num_samples, seed" in message


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    """Opening a FIFO waits for a writer for ever (a session that named one hung); a writer is
    ready here so that the test ends either way (the old reader failed on it with 'Illegal seek')."""
    import os
    import threading

    fifo = tmp_path / "checkpoint.pt"
    os.mkfifo(fifo)
    buffer = io.BytesIO()
    torch.save({"embed.weight": torch.zeros(2)}, buffer)

    def write():
        with open(fifo, "wb") as sink:
            sink.write(buffer.getvalue())

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        message = error_of(CheckpointError, load_checkpoint, fifo)
        assert "<path> is not a regular file (a pipe, socket or device); point at the .pt file" in message
    finally:  # let the writer finish if nobody read
        reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer.join(timeout=10)
        os.close(reader)


@pytest.mark.parametrize("spec", [".relative:build", "..:build"])
def test_a_relative_factory_module_is_a_clear_error(plain_state_dict, spec):
    path, _ = plain_state_dict
    message = error_of(CheckpointError, load_checkpoint, path, factory=spec)
    assert f"setting `model`: importing {spec.partition(':')[0]!r} raised TypeError" in message
    assert "give an absolute module path" in message


@pytest.mark.parametrize(
    "source, phrase",
    [
        (None, "setting `credit`: cannot import 'fa_no_such_credit_xyz'"),
        ("def make(model, checkpoint):\n    raise ValueError('no feedback here')\n",
         "setting `credit=SPEC`: your credit factory raised ValueError: no feedback here"),
        ("def make(model):\n    return None\n", "setting `credit=SPEC`: your credit factory raised TypeError"),
        ("import sys\ndef make(model, checkpoint):\n    sys.exit('no credit for this one')\n",
         "setting `credit=SPEC`: your credit factory raised SystemExit: no credit for this one"),
        ("def make(model, checkpoint):\n    return None\n",
         "setting `credit=SPEC`: the factory returned NoneType, not a credit signal"),
    ],
)
def test_a_credit_factory_that_fails_is_named_as_the_credit_setting(dfa_bundle, factory_module, source, phrase):
    """The credit setting's errors named the model setting, and the factory's own errors (or
    a result that is no signal) escaped as raw exceptions or an empty Γ reason."""
    spec = "fa_no_such_credit_xyz:make" if source is None else f"{factory_module(source)}:make"
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5, credit=spec))
    with pytest.raises((CheckpointError, ModelInterfaceError)) as info:
        runner.report(str(dfa_bundle))
    assert phrase.replace("SPEC", spec) in str(info.value)


_SIGNAL = "def make(model, checkpoint):\n    def credit(x, y, logits, hiddens):\n        {}\n    return credit\n"


@pytest.mark.parametrize(
    "body, phrase",
    [
        ("raise KeyError('h_9')", "setting `credit=SPEC`: the credit signal raised KeyError: 'h_9'; a credit signal is "
         "called as credit(x, y, logits, hiddens) and returns [a_0, ..., a_L]: per state h_l, one tensor"),
        ("return 3", "setting `credit=SPEC`: the credit signal returned int, not a list"),
        ("return logits", "setting `credit=SPEC`: the credit signal returned Tensor, not a list"),
        ("return [None] * (len(hiddens) - 1) + ['a']", "setting `credit=SPEC`: credit a_4 is str, not a tensor"),
        ("return [None]", "setting `credit=SPEC`: the credit signal returned 1 layers for 5 hidden states"),
        (None, "setting `credit=functools:partial`: the credit signal raised TypeError"),
    ],
)
def test_a_credit_signal_that_fails_is_named_as_the_credit_setting(dfa_bundle, factory_module, body, phrase):
    """A signal that raised, or returned no list of one tensor (or None) per state, escaped as
    its own TypeError or as an AttributeError on ``a.shape``."""
    spec = "functools:partial" if body is None else f"{factory_module(_SIGNAL.format(body))}:make"
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_acc=0.5, credit=spec))
    with pytest.raises(ModelInterfaceError) as info:
        runner.report(str(dfa_bundle))
    assert phrase.replace("SPEC", spec) in str(info.value)


@pytest.mark.parametrize(
    "recipe, phrase",
    [
        ({"lr": -1.0}, "lr=-1.0: give a finite number > 0"),
        ({"weight_decay": float("nan")}, "weight_decay=nan: give a finite number ≥ 0"),
        ({"batch_size": 0}, "batch_size=0: give a whole number ≥ 1"),
        ({"momentum": 0.9}, "unexpected keyword argument 'momentum'"),
        ({"schedule": "linear"}, "unknown schedule 'linear'; the trainer runs cosine, constant"),
        ({"optimizer": "sgd"}, "unknown optimizer 'sgd'; the trainer runs adamw"),
    ],
)
def test_a_recipe_the_baseline_cannot_be_trained_with_is_refused(bp_bundle, tmp_path, recipe, phrase):
    """The frozen baseline is trained with the bundle's recipe: one the trainer cannot run
    raised from inside torch (or trained another optimizer than the one recorded)."""
    payload = torch.load(bp_bundle, weights_only=True)
    payload["recipe"].update(recipe)
    path = save_payload(tmp_path, payload)
    runner = ProtocolRunner(ProtocolSettings(device="cpu", cache_dir=str(tmp_path / "cache")))
    message = error_of(CheckpointError, runner.frozen_baseline, str(path))
    assert "<path> records the recipe" in message and "which the frozen baseline cannot be trained with" in message
    assert phrase in message and "setting `frozen_acc=ACC`" in message


def test_weights_and_feedback_a_dtype_cast_would_cut_are_refused(dfa_bundle, tmp_path):
    """Complex weights were copied into the real model without their imaginary part, and
    complex feedback matrices cast to real in the credit, both with a warning only: the
    protocol measured another model than the one stored."""
    payload = torch.load(dfa_bundle, weights_only=True)
    payload["state_dict"]["out_head.weight"] = payload["state_dict"]["out_head.weight"].to(torch.complex64)
    path = save_payload(tmp_path, payload, "weights.pt")
    message = error_of(CheckpointError, load_checkpoint, path)
    assert "a dtype the copy would cut (the imaginary part, the fraction) out_head.weight: checkpoint " \
        "torch.complex64 into model torch.float32" in message
    payload = torch.load(dfa_bundle, weights_only=True)
    payload["feedback"][2] = payload["feedback"][2].to(torch.complex64)
    path = save_payload(tmp_path, payload, "feedback.pt")
    message = error_of(FeedbackError, load_checkpoint, path)
    assert "<path>: feedback matrix B_2 is complex (torch.complex64); feedback matrices are real" in message


# -- --fa-hidden on a DFA/FA bundle, credit per checkpoint, factories from the rootdir --------

SEQUENTIAL_STATES = "1, [2-4]"


def _sequential_bundle(tmp_path, name, method, small_data) -> Path:
    """A DFA or FA bundle of a model without ``return_hidden`` (states named by --fa-hidden)."""
    from pytest_fa.core.credit import init_fa_feedback

    build = importlib.import_module(name).build
    init = init_dfa_feedback if method == "dfa" else init_fa_feedback
    feedback = init(CLASSES, [32] * 4, torch.Generator().manual_seed(0))
    bundle = Bundle(arch="custom", arch_config={}, state_dict=build().state_dict(), method=method,
                    feedback=feedback, data=small_data.spec, seed=0, epochs=1, metrics={"test_acc": 0.1})
    return save_bundle(tmp_path / f"{method}_seq.pt", bundle)


@pytest.mark.parametrize("method", ["dfa", "fa"])
def test_hidden_states_named_by_the_setting_serve_a_dfa_or_fa_bundle(method, tmp_path, factory_module, small_data):
    """The feedback matrices are checked against the states the setting names, so the model is
    adapted before they are: a DFA/FA bundle of any model loads with ``hidden``."""
    from pytest_fa.core.adapter import HookedModel, adapt

    name = factory_module(SEQUENTIAL_SOURCE)
    path = _sequential_bundle(tmp_path, name, method, small_data)
    runner = ProtocolRunner(ProtocolSettings(model_factory=f"{name}:build", hidden=SEQUENTIAL_STATES,
                                             device="cpu", frozen_acc=0.1))
    report = runner.report(str(path))
    assert report.credit_status == "computed" and len(report.layers) == 4

    loaded = load_checkpoint(path, factory=f"{name}:build", input_shape=INPUT_SHAPE, num_classes=CLASSES,
                             adapt=lambda m: adapt(m, SEQUENTIAL_STATES))
    assert isinstance(loaded.model, HookedModel) and len(loaded.state.feedback) == 4


def test_a_factory_outside_sys_path_is_found_in_the_root_and_otherwise_explained(tmp_path):
    """``pytest`` (unlike ``python -m pytest``) leaves the rootdir off sys.path: a factory is
    looked up there, for its import only, and one found nowhere says how to make it importable."""
    from pytest_fa.training.checkpoint import import_factory

    name = f"fa_rooted_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(FACTORY_SOURCE)
    before = list(sys.path)
    try:
        message = error_of(CheckpointError, import_factory, f"{name}:build")
        assert f"setting `model`: cannot import {name!r} (No module named {name!r})" in message
        assert "`pythonpath` ini key" in message and "PYTHONPATH" in message
        assert isinstance(import_factory(f"{name}:build", root=tmp_path)(), ResMLP)
        assert sys.path == before
        with pytest.raises(CheckpointError) as info:
            import_factory("fa_no_such_credit:make", "credit", root=tmp_path)
        missing = str(info.value)
        assert "setting `credit`: cannot import 'fa_no_such_credit'" in missing and f"and in {tmp_path}" in missing
    finally:
        sys.modules.pop(name, None)


def test_the_runner_imports_factories_from_its_root(plain_state_dict, tmp_path, small_default_data):
    path, _ = plain_state_dict
    name = f"fa_rooted_{uuid.uuid4().hex[:10]}"
    root = tmp_path / "repo"
    root.mkdir()
    (root / f"{name}.py").write_text(FACTORY_SOURCE)
    try:
        settings = ProtocolSettings(model_factory=f"{name}:build", data="mnist1d", device="cpu", frozen_acc=0.1)
        run = ProtocolRunner(settings, root=root).run(str(path))
        assert isinstance(run.model, ResMLP)
    finally:
        sys.modules.pop(name, None)


CREDIT_SOURCE = """
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
import torch

CALLS = []


def make_credit(model, checkpoint):
    CALLS.append((type(model).__name__, type(checkpoint).__name__, checkpoint.label))
    return DFACredit(init_dfa_feedback(10, [32] * 5, torch.Generator().manual_seed(0)))
"""


def test_credit_is_chosen_per_checkpoint(bp_bundle, dfa_bundle, tmp_path, factory_module):
    """A ``credit_map`` line ``PATTERN = module:make_credit`` gives the checkpoints whose path or
    file name matches it their own factory; the others keep ``credit``, else their own method."""
    from pytest_fa.core.credit import BPCredit

    name = factory_module(CREDIT_SOURCE)
    calls = importlib.import_module(name).CALLS
    bio = tmp_path / "biotorch_fa.pt"
    bio.write_bytes(Path(dfa_bundle).read_bytes())
    runner = ProtocolRunner(ProtocolSettings(device="cpu", credit_map=(f"biotorch_* = {name}:make_credit",)))
    credits = {}
    for path in (bp_bundle, bio):
        run = runner.run(str(path))
        credits[run.loaded.label], _ = runner.credit_for(run.loaded, run.pristine)
    assert isinstance(credits["bp_s42.pt"], BPCredit)
    assert isinstance(credits["biotorch_fa.pt"], DFACredit)
    assert calls == [("ResMLP", "LoadedCheckpoint", "biotorch_fa.pt")]

    # `credit` alone applies to every checkpoint; the map overrides it where a pattern matches
    calls.clear()
    both = ProtocolRunner(ProtocolSettings(device="cpu", credit=f"{name}:make_credit",
                                           credit_map=(f"*/nomatch/* = {name}:nowhere",)))
    for path in (bp_bundle, bio):
        run = both.run(str(path))
        both.credit_for(run.loaded, run.pristine)
    assert [label for *_, label in calls] == ["bp_s42.pt", "biotorch_fa.pt"]


@pytest.mark.parametrize(
    "line, phrase",
    [
        ("biotorch_*", "PATTERN = package.module:make_credit"),
        (" = mod:make", "PATTERN = package.module:make_credit"),
        ("*.pt = mod", "must look like package.module:make_credit"),
    ],
)
def test_a_credit_map_line_that_names_no_pattern_or_factory_is_refused(line, phrase):
    from pytest_fa.core.settings import SettingError

    with pytest.raises(SettingError) as info:
        ProtocolSettings(credit_map=(line,))
    assert info.value.name == "credit_map" and phrase in info.value.message


def test_the_credit_factory_type_states_the_signature():
    import inspect

    from pytest_fa.training.checkpoint import CreditFactory

    assert list(inspect.signature(CreditFactory.__call__).parameters) == ["self", "model", "checkpoint"]
    doc = CreditFactory.__doc__
    assert "HookedModel" in doc and "LoadedCheckpoint" in doc and "credit(x, y, logits, hiddens)" in doc
