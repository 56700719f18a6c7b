"""The table of bad inputs (docs/bad-inputs.md): each input, the part of pytest-fa's message that
names it, and a check that the message is still that, a clear error and no traceback.

``BAD_INPUTS`` is the table; tools/bad_inputs_doc.py renders docs/bad-inputs.md from it, and
``test_bad_inputs_md_is_the_generators_output`` keeps the file equal to that output. Every case
runs in-process on what the session fixtures already trained, so the module stays fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, NamedTuple

import pytest
import torch

import pytest_fa
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.errors import FAError
from pytest_fa.plugin._options import check_report_path, session_settings
from pytest_fa.training import cli, trainer
from pytest_fa.models import build_model
from pytest_fa.training.checkpoint import load_bundle, load_checkpoint, save_bundle
from pytest_fa.training.data import load_dataset
from test_api import _ReturnsHiddenWithOtherNames
from test_credit import CLASSES, STATES, WIDTH, _biotorch_matrices, _call
from test_docs import DOCS, _generator
from test_fuzz_bad_inputs import OptionsConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class BadInput(NamedTuple):
    """One row of docs/bad-inputs.md: ``provoke(tmp_path, fx)`` raises the error whose message
    holds ``says``; ``fx`` holds the session's DFA bundle, its trained model and its test data."""

    id: str
    family: str
    input: str
    provoke: Callable[[Path, SimpleNamespace], object]
    says: str


# -- how each case is provoked ------------------------------------------------------------------
# (the helpers of test_checkpoint and test_adapter would import torchvision, 2 s of this module)


def _resmlp():
    return build_model("resmlp", input_shape=[40], num_classes=10, d=16, depth=3)


def _saved(tmp_path, payload):
    torch.save(payload, tmp_path / "payload.pt")
    return tmp_path / "payload.pt"



def _payload_edit(edit):
    """Load the DFA bundle's payload, ``edit(payload)``, save it and load it as a checkpoint."""
    def provoke(tmp_path, fx):
        payload = torch.load(fx.dfa_bundle, weights_only=True)
        edit(payload)
        load_checkpoint(_saved(tmp_path, payload))
    return provoke


def _bundle_edit(edit):
    """Load the DFA bundle, ``edit(bundle)``, save it and load it as a checkpoint."""
    def provoke(tmp_path, fx):
        bundle = load_bundle(fx.dfa_bundle)
        edit(bundle)
        load_checkpoint(save_bundle(tmp_path / "edited.pt", bundle))
    return provoke


def _bytes(content: bytes):
    def provoke(tmp_path, fx):
        path = tmp_path / "file.pt"
        path.write_bytes(content)
        load_checkpoint(path)
    return provoke


def _pipe(tmp_path, fx):
    pipe = tmp_path / "pipe.pt"
    os.mkfifo(pipe)  # no writer: opening it would block
    load_checkpoint(pipe)


def _truncated(tmp_path, fx):
    path = tmp_path / "truncated.pt"
    path.write_bytes(Path(fx.dfa_bundle).read_bytes()[:1000])
    load_checkpoint(path)


def _plain(factory=None):
    def provoke(tmp_path, fx):
        path = tmp_path / "plain.pt"
        torch.save(_resmlp().state_dict(), path)
        load_checkpoint(path, factory=factory)
    return provoke


def _planned(payload):
    payload["epochs"], payload["metrics"]["planned_epochs"] = 10, 2


def _check(make=lambda x, y: (x, y), model=None, **options):
    """``pytest_fa.check`` on the trained DFA model (or ``model``) and ``make(x_test, y_test)``."""
    def provoke(tmp_path, fx):
        data = make(fx.small_data.x_test, fx.small_data.y_test)
        pytest_fa.check(model or fx.dfa.model, data, **{"frozen_acc": 0.3, **options})
    return provoke


def _set(y, index, value):
    y = y.clone()
    y[index] = value
    return y


def _adapt(states, **kwargs):
    def provoke(tmp_path, fx):
        pytest_fa.adapt(_resmlp(), states, **kwargs)(torch.zeros(2, 40), return_hidden=True)
    return provoke


def _credit(matrices):
    return lambda tmp_path, fx: _call(DFACredit(matrices()))


def _option(**cli):
    """The plugin's start-up reading ``--fa-NAME=VALUE`` for each ``NAME=VALUE`` of ``cli``."""
    return lambda tmp_path, fx: session_settings(OptionsConfig(cli, {}, tmp_path / "pytest.ini"))


def _report_path(flag, make):
    return lambda tmp_path, fx: check_report_path(str(make(tmp_path)), flag)


def _fa_train(*argv):
    """fa-train with ``argv`` after a valid ``--out`` (a ``{file}`` in argv is an existing file)."""
    def provoke(tmp_path, fx):
        file = tmp_path / "afile"
        file.write_text("not a folder")
        cli.main(["--out", str(tmp_path / "runs"), "--quiet", *(a.format(file=file) for a in argv)])
    return provoke


# -- the table ------------------------------------------------------------------------------------
C, B, O, M, K, D, T = "checkpoint file", "bundle field", "option", "model / adapter", "credit", "data", "fa-train"

BAD_INPUTS = [
    BadInput("missing-file", C, "a checkpoint path that does not exist",
             lambda tmp_path, fx: load_checkpoint(tmp_path / "nope.pt"), "does not exist; check the path"),
    BadInput("directory", C, "a folder given as the checkpoint",
             lambda tmp_path, fx: load_checkpoint(tmp_path), "is a directory; point at the .pt file"),
    BadInput("pipe", C, "a checkpoint that is a pipe", _pipe,
             "is not a regular file (a pipe, socket or device); point at the .pt file"),
    BadInput("noise", C, "a file of random bytes", _bytes(bytes(range(256)) * 16),
             "is not a checkpoint pytest-fa can read safely"),
    BadInput("truncated", C, "a bundle cut short", _truncated, "corrupt or truncated"),
    BadInput("pickled-object", C, "a pickled Python object instead of tensors",
             lambda tmp_path, fx: load_checkpoint(_saved(tmp_path, SimpleNamespace(w=torch.zeros(2)))),
             "needs arbitrary code to load (an unsafe pickle), so pytest-fa refuses it"),
    BadInput("not-a-dict", C, "a file that holds a list, not a bundle",
             lambda tmp_path, fx: load_checkpoint(_saved(tmp_path, [torch.zeros(2)])),
             "holds a list; expected a pytest-fa bundle or a state dict"),
    BadInput("plain-state-dict", C, "a plain state dict without a model factory", _plain(),
             "is a plain state dict; pytest-fa needs the architecture to rebuild it"),
    BadInput("format-version", B, "a bundle of a newer format version",
             _payload_edit(lambda p: p.update(format_version=2)), 
             "has bundle format version 2; this pytest-fa reads version 1. Upgrade pytest-fa or re-save the bundle"),
    BadInput("unknown-arch", B, "an architecture pytest-fa does not know",
             _bundle_edit(lambda b: setattr(b, "arch", "resnet9000")),
             "unknown architecture 'resnet9000'; pytest-fa ships resmlp, smallcnn, studentnet, vit-mini"),
    BadInput("unknown-method", B, "a training method pytest-fa does not know",
             _bundle_edit(lambda b: setattr(b, "method", "forward-forward")),
             "unknown method 'forward-forward'; pytest-fa knows bp, credit_bridge, dfa, ep, fa, frozen, state_bridge"),
    BadInput("dfa-without-feedback", B, "a DFA bundle without its feedback matrices",
             _bundle_edit(lambda b: setattr(b, "feedback", [])), 
             "trains with fixed feedback matrices but the bundle carries none"),
    BadInput("negative-epochs", B, "a negative epoch count",
             _payload_edit(lambda p: p.update(epochs=-3)),
             "records epochs=-3; a training budget is a whole number ≥ 1"),
    BadInput("epochs-over-plan", B, "more epochs than were planned", _payload_edit(_planned),
             "records epochs=10 but metrics.planned_epochs=2: a run cannot train more epochs than it planned"),
    BadInput("seed-text", B, "a seed that is text",
             _payload_edit(lambda p: p.update(seed="abc")), 
             "records seed='abc'; a seed is a whole number torch can seed with"),
    BadInput("metrics-list", B, "metrics that are a list, not a dict",
             _payload_edit(lambda p: p.update(metrics=[0.9])), "records metrics of type list; metrics is a dict"),
    BadInput("malformed-factory", M, "a model factory not written as module:function", _plain("nocolon"),
             "setting `model='nocolon'` must look like package.module:build"),
    BadInput("missing-factory-module", M, "a model factory in a module that does not exist",
             _plain("fa_no_such_module_xyz:build"), "setting `model`: cannot import 'fa_no_such_module_xyz'"),
    BadInput("pattern-matches-nothing", M, "an adapt() pattern that matches no module",
             _adapt(["embed", "layers.*"]),
             "'layers.*' matches no module of ResMLP; its top-level modules are ['embed', 'blocks', 'out_ln',"),
    BadInput("no-states", M, "adapt() given no state names", _adapt(" , "),
             "no states named: give module paths or patterns such as 'embed, blocks.*'"),
    BadInput("wrong-block-output", M, "adapt() told blocks return the stream when they return a branch",
             _adapt(["embed", "blocks.*"], block_output="sum"), 
             "the forward pass shows blocks returning f(h): set block_output='branch' or 'auto'"),
    BadInput("unknown-layout", M, "a model without `embed` or `patch_embed`, not adapted",
             _check(model=_ReturnsHiddenWithOtherNames()), 
             "has neither `embed` nor `patch_embed`; expose the module that produces h_0 under one of those names"),
    BadInput("biotorch-matrices", K, "per-Linear (biotorch) feedback matrices given to DFACredit",
             _credit(_biotorch_matrices), 
             "one out × in matrix per Linear (biotorch style): they do not fit DFACredit"),
    BadInput("feedback-count", K, "one feedback matrix more than the model has states",
             _credit(lambda: init_dfa_feedback(CLASSES, [WIDTH] * (STATES + 1), torch.Generator().manual_seed(0))),
             "expected 4 feedback matrices (one per hidden state h_0..h_L), found 5"),
    BadInput("too-few-samples", D, "fewer eval samples than the eval batches need",
             _check(lambda x, y: (x[:500], y[:500])), "has 500 samples but 8 batches of 128 need 1024"),
    BadInput("one-hot-labels", D, "one-hot labels", _check(lambda x, y: (x, torch.nn.functional.one_hot(y))),
             "(one-hot labels: pass y.argmax(dim=1))"),
    BadInput("nan-inputs", D, "a NaN in the inputs", _check(lambda x, y: (_set(x, 3, float("nan")), y)),
             "the inputs contain NaN or inf; clean the data before measuring the model on it"),
    BadInput("label-out-of-range", D, "a label the model has no class for",
             _check(lambda x, y: (x, _set(y, 0, 15))), 
             "label 15 is not a class of the model: its logits have 10 classes"),
    BadInput("one-class", D, "eval batches of one class", _check(lambda x, y: (x, torch.full_like(y, 3))),
             "accuracy and (d) mean nothing on one class; pass samples of at least two classes"),
    BadInput("frozen-acc-percent", D, "a frozen accuracy given in percent", _check(frozen_acc=65.0),
             "frozen_acc=65.0: give the control's accuracy as a fraction in [0, 1]"),
    BadInput("four-batches", D, "fewer than 8 eval batches", _check(num_batches=4),
             "diagnostic (c) needs at least 8 disjoint batches"),
    BadInput("unknown-data-set", D, "a data set name pytest-fa does not know",
             lambda tmp_path, fx: load_dataset("mnist"), 
             "unknown data set 'mnist'; choose one of mnist1d, fashion-mnist, cifar10, cifar100, synthetic"),
    BadInput("max-growth-nan", O, "`--fa-max-growth=nan`", _option(max_growth=float("nan")),
             "--fa-max-growth=nan: a threshold must be a finite number"),
    BadInput("b-rule", O, "an unknown (b) rule", _option(b_rule="x"), "--fa-b-rule='x': use one of decomposed, paper"),
    BadInput("grad-floor-zero", O, "a gradient floor of 0", _option(grad_floor=0.0),
             "--fa-grad-floor=0: grad_floor must be positive"),
    BadInput("report-is-folder", O, "a JSON report path that is a folder",
             _report_path("--fa-report-json", lambda tmp_path: tmp_path),
             "is a folder; give the path of a file inside it"),
    BadInput("out-is-file", T, "`--out` naming a file", _fa_train("--out", "{file}"),
             "is a file; pass a folder for the bundles"),
    BadInput("zero-epochs", T, "`--epochs 0`", _fa_train("--epochs", "0"), 
             "argument --epochs: got '0'; use a whole number 1 or more"),
    BadInput("unknown-training-method", T, "a method fa-train does not know", _fa_train("--methods", "foo"),
             "unknown method 'foo'; fa-train knows bp, credit_bridge, dfa, ep, fa, frozen, state_bridge"),
    BadInput("penalty-without-dfa", T, "`--penalty` without dfa among the methods",
             _fa_train("--penalty", "0.1", "--methods", "bp"),
             "--penalty: only dfa takes the scale penalty here; add dfa to --methods or drop --penalty"),
    BadInput("cifar-without-root", T, "`--data cifar10` without a data root", _fa_train("--data", "cifar10"),
             "cifar10 needs a data root: pass --data-root=<folder containing cifar-10-batches-py>"),
]


def _went_on(*args, **kwargs):
    raise AssertionError("fa-train went on past a bad argument")


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case.id for case in BAD_INPUTS])
def test_bad_input(case, tmp_path, dfa_trained, small_data, capsys, monkeypatch):
    fx = SimpleNamespace(dfa_bundle=dfa_trained[1], dfa=dfa_trained[0], small_data=small_data)
    if case.family == T:
        monkeypatch.setattr(trainer, "train", _went_on)
        with pytest.raises(SystemExit) as info:
            case.provoke(tmp_path, fx)
        assert info.value.code == 2
        message = capsys.readouterr().err
    else:
        with pytest.raises(pytest.UsageError if case.family == O else FAError) as info:
            case.provoke(tmp_path, fx)
        message = str(info.value)
    assert case.says in message
    assert "Traceback" not in message, message


def test_bad_inputs_md_is_the_generators_output():
    assert (DOCS / "bad-inputs.md").read_text(encoding="utf-8") == _generator("bad_inputs_doc").render(BAD_INPUTS), (
        "docs/bad-inputs.md is out of date: run python tools/bad_inputs_doc.py")
