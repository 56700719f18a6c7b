"""Pitfall B5: diagnostics measured in whatever mode the model is in (train mode after a training
loop): BatchNorm statistics or dropout masks change ‖h‖, g and the credit."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_fa import strategies as fst
from pytest_fa.core import diagnostics as D
from pytest_fa.core import probe
from pytest_fa.core.credit import DFACredit
from pytest_fa.core.reference import reference_pass
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed, loaded_or_skip
from pytest_fa.pitfalls.regimes import BATCHNORM_CNN, BATCHNORM_DATA, torch_threads
from pytest_fa.training.data import eval_batches, load_dataset
from pytest_fa.training.methods import get_method
from pytest_fa.training.trainer import Recipe, accuracy, train

pytestmark = pytest.mark.fa_pitfall("B5")

RECIPE = Recipe(lr=3e-2, schedule="constant")
EPOCHS = 2
MATERIAL_REL = 0.10  # a per-layer median ‖h_l‖ or ‖g_l‖ that moves by more than 10 %
MATERIAL_GAMMA = 0.05  # or a Γ_l that moves by more than 0.05


def _naive_run_probe(model, eval_batches, credit=None, device=None):
    """The probe without its mode handling: it measures in whatever mode the model is in."""
    batches = list(eval_batches)
    measured = probe.probe_batches(model, batches, credit, len(batches[0][0]))
    measured.mode = "train" if model.training else "eval"
    return measured


GUARD = Guard("pytest_fa.core.probe.run_probe", _naive_run_probe,
              "diagnostics measured in the mode the model happens to be in",
              Witness(bundle="batchnorm", paths=("python",), train_mode=True,
                      why_not="the command line always measures a freshly loaded model, in eval mode"))


def naive_diagnostics(model, batches):
    """The measurement loop as it is written right after training: no ``model.eval()``."""
    h_norms, g_norms, correct = [], [], 0
    for x, y in batches:
        ref = reference_pass(model, x, y)  # in whatever mode the model was left in
        h_norms.append([D.per_sample_norms(h.detach().flatten(1)) for h in ref.hiddens])
        g_norms.append([D.per_sample_norms(g.flatten(1)) for g in ref.grads])
        correct += int((ref.logits.argmax(-1) == y).sum())
    h = D.layer_medians([torch.cat(layer) for layer in zip(*h_norms)])
    g = D.layer_medians([torch.cat(layer) for layer in zip(*g_norms)])
    return h, g, correct / sum(len(y) for _, y in batches)


@pytest.fixture(scope="session")
def batchnorm_run(fa_realisation):
    """DFA on SmallCNN (BatchNorm in every block) with MNIST-1D, left in train mode."""
    seed, threads = fa_realisation
    data = load_dataset("mnist1d", **BATCHNORM_DATA)
    with torch_threads(threads):
        result = train(data, "dfa", arch="smallcnn", arch_config=BATCHNORM_CNN, epochs=EPOCHS, seed=seed,
                       recipe=RECIPE, device="cpu", monitor=False)
    assert result.model.training, "a training loop leaves the model in train mode"
    return SimpleNamespace(data=data, result=result, batches=eval_batches(data, 8, 128, seed=0))


def test_measuring_in_train_mode_moves_the_diagnostics_and_rewrites_the_model(batchnorm_run):
    """Pitfall B5: measured in train mode a BatchNorm network reads other ‖g_l‖ and accuracy,
    and the measurement rewrites its running statistics."""
    model = copy.deepcopy(batchnorm_run.result.model)  # in train mode, as training left it
    batches = batchnorm_run.batches
    honest = probe.run_probe(copy.deepcopy(model), batches)
    h_eval, g_eval = D.layer_medians(honest.hidden_norms), D.layer_medians(honest.grad_norms)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    acc_before = accuracy(model, batchnorm_run.data.x_test, batchnorm_run.data.y_test)

    h_train, g_train, acc_train = naive_diagnostics(model, batches)

    # measured (CPU): ‖g_l‖ eval 4.19e-3 6.69e-4 6.18e-4 4.11e-4 vs train 2.60e-3 4.04e-4 3.83e-4 2.67e-4
    #                 accuracy on the eval batches 0.227 (eval) vs 0.311 (train mode)
    g_shift = ((g_train - g_eval).abs() / g_eval).max()
    assert g_shift > 0.2, (g_eval.tolist(), g_train.tolist())
    assert abs(acc_train - honest.eval_accuracy) > 0.03, (acc_train, honest.eval_accuracy)
    # the naive measurement rewrote the BatchNorm running statistics
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("running_mean" in k for k in changed) and any("running_var" in k for k in changed), changed
    acc_after = accuracy(model, batchnorm_run.data.x_test, batchnorm_run.data.y_test)
    assert acc_after != acc_before
    assert h_train.shape == h_eval.shape


@given(train_mode=st.booleans(), batch_size=st.integers(1, 128), seed=fst.seeds())
@settings(max_examples=15, deadline=None)
def test_the_probe_measures_in_eval_mode_whatever_mode_it_is_handed(batchnorm_run, train_mode, batch_size, seed):
    """Pitfall B5: pytest-fa measures in eval mode, records it, restores the caller's mode and
    leaves every buffer untouched."""
    reference_model = copy.deepcopy(batchnorm_run.result.model).eval()
    credit = DFACredit(batchnorm_run.result.state.feedback)
    batches = eval_batches(batchnorm_run.data, 2, batch_size, seed=seed % 1000)
    reference = probe.run_probe(reference_model, batches, credit=credit)

    model = copy.deepcopy(batchnorm_run.result.model).train(train_mode)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measured = probe.run_probe(model, batches, credit=credit)

    assert measured.mode == "eval"
    assert model.training == train_mode, "the caller's mode is restored"
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "no buffer moved"
    for ours, ref in zip(measured.hidden_norms + measured.grad_norms, reference.hidden_norms + reference.grad_norms):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    for ours, ref in zip(measured.cosines, reference.cosines):
        torch.testing.assert_close(ours, ref, rtol=0, atol=0, equal_nan=True)

    # in eval mode a sample's ‖h_l‖ is its own: measured alone it is the same number
    x, y = batches[0]
    alone = probe.run_probe(model, [(x[:1], y[:1])])
    for single, batch in zip(alone.hidden_norms, measured.hidden_norms):
        torch.testing.assert_close(single[0], batch[0], rtol=1e-4, atol=0)


def test_user_checkpoint_diagnostics_do_not_depend_on_the_mode(fa_checkpoint_path, fa_runner):
    """Pitfall B5: your checkpoint gives materially the same ‖h_l‖, ‖g_l‖ and Γ_l in train and
    eval mode."""
    run, batches = loaded_or_skip(fa_runner, fa_checkpoint_path)
    name = Path(run.path).name
    method = get_method(run.method, **run.bundle.method_config) if run.bundle is not None else None
    credit = method.credit(run.pristine, run.loaded.state)[0] if method is not None else None
    honest = probe.run_probe(copy.deepcopy(run.pristine).eval(), batches, credit=credit)
    torch.manual_seed(0)  # dropout masks, if any
    naive = _naive_run_probe(copy.deepcopy(run.pristine).train(), batches, credit=credit)

    rows, material = [], []
    for label, ours, theirs in (
        ("‖h_l‖", D.layer_medians(honest.hidden_norms), D.layer_medians(naive.hidden_norms)),
        ("‖g_l‖", D.layer_medians(honest.grad_norms), D.layer_medians(naive.grad_norms)),
    ):
        rel = ((theirs - ours).abs() / ours.abs()).nan_to_num(nan=0.0)
        rows.append(f"{label} eval {_fmt(ours)} vs train {_fmt(theirs)}")
        if float(rel.max()) > MATERIAL_REL:
            material.append(f"{label} moves by up to {float(rel.max()):.0%} (layer {int(rel.argmax())})")
    if honest.cosines is not None:
        ours = [D.mean_defined(c)[0] if c is not None else float("nan") for c in honest.cosines]
        theirs = [D.mean_defined(c)[0] if c is not None else float("nan") for c in naive.cosines]
        shift = max((abs(a - b) for a, b in zip(ours, theirs) if a == a and b == b), default=0.0)
        rows.append("Γ_l eval " + " ".join(f"{v:+.3f}" for v in ours) + " vs train " + " ".join(f"{v:+.3f}" for v in theirs))
        if shift > MATERIAL_GAMMA:
            material.append(f"Γ_l moves by up to {shift:.3f}")
    if material:
        exposed("B5", f"{name}: the diagnostics differ between train and eval mode: " + "; ".join(material)
                + f" (accuracy on the eval batches {honest.eval_accuracy:.3f} eval vs "
                f"{naive.eval_accuracy:.3f} train).\n    " + "\n    ".join(rows)
                + "\n    pytest-fa measures in eval mode; a pipeline that does not fix the mode reports the "
                "train-mode numbers")


def _fmt(values: torch.Tensor) -> str:
    return " ".join(f"{float(v):.3g}" for v in values)
