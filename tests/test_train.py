"""The trainer: what each method updates, determinism, bundles, the command line."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_ARCH

from pytest_fa.core.interface import block_weights
from pytest_fa.core.settings import SettingError, resolve_device
from pytest_fa.models import build_model
from pytest_fa.training.checkpoint import load_bundle
from pytest_fa.training.methods import DFA, FrozenBlocks, get_method
from pytest_fa.training.cli import main
from pytest_fa.training.trainer import Recipe, accuracy, train
from pytest_fa.pitfalls.regimes import torch_threads


def fresh(small_data, seed=42):
    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=small_data.input_shape, num_classes=10, **SMALL_ARCH)


def test_frozen_baseline_keeps_block_weights_at_their_initial_values(small_data):
    init = fresh(small_data).state_dict()
    result = train(small_data, "frozen", arch_config=SMALL_ARCH, epochs=1, seed=42, monitor=False)
    frozen_ids = {id(p) for p in block_weights(result.model)}
    names = {n for n, p in result.model.named_parameters() if id(p) in frozen_ids}
    assert names and all(".ln." not in n for n in names)
    after = result.model.state_dict()
    for name, value in after.items():
        if name in names:
            torch.testing.assert_close(value, init[name])
    moved = [n for n in after if n not in names and not torch.equal(after[n], init[n])]
    assert {"embed.weight", "out_head.weight", "out_ln.weight", "blocks.0.ln.weight"} <= set(moved)


def test_bp_and_dfa_update_the_blocks(bp_trained, dfa_trained, small_data):
    init = fresh(small_data).state_dict()
    for result, _ in (bp_trained, dfa_trained):
        assert not torch.equal(result.model.state_dict()["blocks.0.w1.weight"], init["blocks.0.w1.weight"])


def test_dfa_block_update_follows_the_credit_at_its_output(small_data):
    """Block l's branch lands in h_{l+1}, so its update is the gradient of ⟨f_l(h_l), a_{l+1}⟩ / B."""
    model = fresh(small_data)
    method = DFA()
    state = method.setup(model, 10, small_data.input_shape, torch.Generator().manual_seed(0))
    x, y = small_data.x_train[:32], small_data.y_train[:32]
    loss, _ = method.loss(model, state, x, y)
    loss.backward()
    logits, hiddens = model(x, return_hidden=True)
    e = torch.softmax(logits.detach(), -1) - F.one_hot(y, 10).float()
    for l in (0, 2):
        w = model.blocks[l].w2.weight
        branch = model.blocks[l](hiddens[l].detach())
        expected = torch.autograd.grad((branch * (e @ state.feedback[l + 1])).sum() / 32, w)[0]
        torch.testing.assert_close(w.grad, expected)
    expected = torch.autograd.grad((hiddens[0] * (e @ state.feedback[0])).sum() / 32, model.embed.weight)[0]
    torch.testing.assert_close(model.embed.weight.grad, expected)
    head = torch.autograd.grad(F.cross_entropy(model.out_head(model.out_ln(hiddens[-1].detach())), y), model.out_head.weight)[0]
    torch.testing.assert_close(model.out_head.weight.grad, head)
    assert len(state.feedback) == 5 and all(b.shape == (10, 32) for b in state.feedback)


def test_dfa_penalty_shrinks_block_outputs(small_data, fa_realisation):
    seed, threads = fa_realisation
    with torch_threads(threads):
        plain = train(small_data, DFA(), arch_config=SMALL_ARCH, epochs=2, seed=seed, monitor=True)
        penalised = train(small_data, DFA(penalty=1.0), arch_config=SMALL_ARCH, epochs=2, seed=seed, monitor=True)
    assert penalised.history[-1]["h_L"] < plain.history[-1]["h_L"]
    assert penalised.bundle.method_config == {"penalty": 1.0}


def test_training_is_deterministic_for_a_seed(small_data):
    a = train(small_data, "dfa", arch_config=SMALL_ARCH, epochs=1, seed=7, monitor=False)
    b = train(small_data, "dfa", arch_config=SMALL_ARCH, epochs=1, seed=7, monitor=False)
    c = train(small_data, "dfa", arch_config=SMALL_ARCH, epochs=1, seed=8, monitor=False)
    for key, value in a.bundle.state_dict.items():
        torch.testing.assert_close(value, b.bundle.state_dict[key])
    assert not torch.equal(a.bundle.feedback[0], c.bundle.feedback[0])
    assert not torch.equal(a.bundle.state_dict["embed.weight"], c.bundle.state_dict["embed.weight"])


def test_bundle_records_how_it_was_trained(dfa_trained, small_data):
    result, path = dfa_trained
    bundle = load_bundle(path)
    assert bundle.method == "dfa" and bundle.arch == "resmlp"
    assert bundle.arch_config == {"input_shape": [40], "num_classes": 10, "d": 32, "depth": 4}
    assert bundle.data == small_data.spec
    assert (bundle.seed, bundle.epochs) == (42, 2)
    assert bundle.recipe == {"lr": 1e-3, "weight_decay": 0.01, "batch_size": 128, "schedule": "cosine", "optimizer": "adamw"}
    assert bundle.headline_acc == result.history[-1]["test_acc"]
    assert [h["epoch"] for h in bundle.metrics["history"]] == [1, 2]
    assert {"loss", "test_acc", "h_L", "max_growth", "g_L", "seconds"} <= set(bundle.metrics["history"][0])
    assert len(bundle.feedback) == 5


def test_recipe_defaults_are_the_papers():
    r = Recipe()
    assert (r.lr, r.weight_decay, r.batch_size, r.schedule, r.optimizer) == (1e-3, 0.01, 128, "cosine", "adamw")


def test_unknown_method_and_bad_budget_are_refused(small_data):
    with pytest.raises(Exception, match="unknown method 'forward-forward'"):
        get_method("forward-forward")
    with pytest.raises(ValueError, match="epochs"):
        train(small_data, "bp", epochs=0)
    assert isinstance(get_method("frozen"), FrozenBlocks)


def test_accuracy_restores_each_submodules_own_mode_also_when_the_model_raises():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 3)).train()
    model[1].eval()  # a frozen BatchNorm inside a model in training mode
    y = torch.zeros(6, dtype=torch.long)
    assert 0.0 <= accuracy(model, torch.randn(6, 4), y) <= 1.0
    assert [m.training for m in model.modules()] == [True, True, False, True]
    model.train()
    with pytest.raises(RuntimeError):
        accuracy(model, torch.randn(6, 5), y)  # the wrong input width: the model raises
    assert all(m.training for m in model.modules())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    for name in ("cuda", "cuda:1"):
        with pytest.raises(SettingError, match="no CUDA GPU"):
            resolve_device(name)
    assert resolve_device("auto").type == "cpu"


@pytest.mark.parametrize("name", ["cudax", "cuda:-1", "mps", "meta"])
def test_the_trainer_takes_the_device_names_the_settings_take(name, small_data):
    message = "use auto, cpu or cuda (cuda:N for GPU number N = 0, 1, …)"
    with pytest.raises(SettingError, match=re.escape(f"device={name!r}: {message}")):
        resolve_device(name)
    with pytest.raises(SettingError, match=re.escape(message)):
        train(small_data, "bp", epochs=1, device=name)
    assert resolve_device("cpu") == torch.device("cpu") and resolve_device(None).type in ("cpu", "cuda")


def test_command_line_writes_one_bundle_per_method_and_seed(tmp_path, capsys, isolated_cache):
    code = main([
        "--data", "mnist1d", "--num-samples", "2000", "--width", "16", "--depth", "2",
        "--epochs", "1", "--methods", "bp", "dfa", "--seeds", "1", "2", "--device", "cpu",
        "--out", str(tmp_path),
    ])
    assert code == 0
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["bp_s1.pt", "bp_s2.pt", "dfa_s1.pt", "dfa_s2.pt"]
    out = capsys.readouterr().out
    assert "dfa s2 epoch   1/1" in out and "test acc" in out and "‖h_L‖" in out
    assert load_bundle(tmp_path / "dfa_s2.pt").arch_config["depth"] == 2


def test_constant_schedule_keeps_the_learning_rate(small_data):
    result = train(small_data, "bp", arch_config=SMALL_ARCH, epochs=1, seed=0,
                   recipe=Recipe(schedule="constant"), monitor=False)
    assert result.bundle.recipe["schedule"] == "constant"
    with pytest.raises(ValueError, match="unknown schedule"):
        train(small_data, "bp", arch_config=SMALL_ARCH, epochs=1, recipe=Recipe(schedule="step"))


def test_on_epoch_can_stop_training_and_the_baseline_follows(small_data, tmp_path):
    from pytest_fa.protocol import ProtocolRunner, ProtocolSettings
    from pytest_fa.training.checkpoint import save_bundle

    seen = []

    def stop_at_first_growth(model, record):
        seen.append(record["epoch"])
        return record["epoch"] == 2

    result = train(small_data, "dfa", arch_config=SMALL_ARCH, epochs=5, seed=3, on_epoch=stop_at_first_growth)
    assert seen == [1, 2]
    assert result.bundle.epochs == 2 and result.bundle.metrics["planned_epochs"] == 5
    path = save_bundle(tmp_path / "early.pt", result.bundle)
    baseline = ProtocolRunner(ProtocolSettings(device="cpu")).frozen_baseline(str(path), tmp_path)
    assert baseline.epochs == 2
    trained = load_bundle(next(tmp_path.glob("frozen-*.pt")))
    assert trained.epochs == 2 and trained.metrics["planned_epochs"] == 5
