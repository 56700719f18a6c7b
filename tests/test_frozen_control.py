"""The frozen-blocks control of (d) outside the bundle path: ``pytest_fa.frozen_control`` gives
a copy at its initial weights with the blocks' weights frozen, and a control whose budget
differs from the trained model's (or cannot be checked against it) is warned about."""

from __future__ import annotations

import importlib
import sys
import textwrap
import uuid
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import pytest_fa
from pytest_fa import protocol
from pytest_fa.assertions import assert_beats_frozen
from pytest_fa.errors import FABudgetWarning, ModelInterfaceError
from pytest_fa.models import build_model
from pytest_fa.protocol import ProtocolRunner, ProtocolSettings
from pytest_fa.training.checkpoint import Bundle
from test_adapter import FACTORY

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _resmlp(seed=0):
    torch.manual_seed(seed)
    return build_model("resmlp", input_shape=[40], num_classes=10, d=16, depth=3)


def _trained(model):
    """``model`` with every weight moved, as training moves it."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    return model


def _built(source):
    namespace = {}
    exec(textwrap.dedent(source), namespace)
    return namespace["build"]()


def _frozen_names(model):
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def test_the_control_is_a_copy_at_its_initial_weights_with_its_block_weights_frozen():
    model = _resmlp()
    init_state = {k: v.clone() for k, v in model.state_dict().items()}
    _trained(model)
    control = pytest_fa.frozen_control(model, init_state=init_state)

    assert type(control) is type(model) and control is not model
    for key, value in control.state_dict().items():
        assert torch.equal(value, init_state[key]), key
    assert not torch.equal(model.embed.weight, init_state["embed.weight"])  # the model is left as it was
    assert all(p.requires_grad for p in model.parameters())
    frozen = _frozen_names(control)
    block_norms = {name for name, _ in control.named_parameters() if name.startswith("blocks.") and ".ln" in name}
    assert frozen and all(name.startswith("blocks.") for name in frozen)
    assert frozen == {name for name, _ in control.named_parameters() if name.startswith("blocks.")} - block_norms
    assert block_norms and not frozen & block_norms  # norms, embedding and head stay trainable


def test_without_an_initial_state_the_weights_are_drawn_again_from_the_seed():
    model = _trained(_resmlp())
    rng = torch.get_rng_state()
    first, again = pytest_fa.frozen_control(model, seed=3), pytest_fa.frozen_control(model, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's random stream is left alone
    for (key, a), b in zip(first.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), key
    assert not torch.equal(first.embed.weight, model.embed.weight)
    other = pytest_fa.frozen_control(model, seed=4)
    assert not torch.equal(other.blocks[0].w1.weight, first.blocks[0].w1.weight)


def test_blocks_are_named_by_module_paths_or_patterns():
    model = _built(FACTORY)  # Flatten, Linear, three SumBlocks, LayerNorm, Linear
    control = pytest_fa.frozen_control(model, blocks="[2-4]")
    assert _frozen_names(control) == {f"{i}.f.{j}.{w}" for i in (2, 3, 4) for j in (1, 3) for w in ("weight", "bias")}
    with pytest.raises(ModelInterfaceError, match=r"blocks='layers\.\*' matches no module of Sequential"):
        pytest_fa.frozen_control(model, blocks="layers.*")
    # an adapted model brings its blocks along, and the copy is adapted too
    adapted = pytest_fa.adapt(model, "1, [2-4]")
    assert _frozen_names(pytest_fa.frozen_control(adapted)) == {f"model.{n}" for n in _frozen_names(control)}


class TokenNet(nn.Module):
    """A cls token held as a bare parameter, which no ``reset_parameters()`` draws again."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.zeros(16))
        self.embed = nn.Linear(40, 16)
        self.blocks = nn.ModuleList([nn.Linear(16, 16) for _ in range(2)])
        self.head = nn.Linear(16, 10)


def test_a_weight_no_reset_parameters_covers_needs_the_initial_state():
    with pytest.raises(ModelInterfaceError) as info:
        pytest_fa.frozen_control(TokenNet())
    message = str(info.value)
    assert "cannot draw the initial value of TokenNet.cls again" in message
    assert "init_state=" in message and "state_dict() before training" in message
    assert pytest_fa.frozen_control(TokenNet(), init_state=TokenNet().state_dict()) is not None


ALL_BLOCKS_SOURCE = """
import torch
from torch import nn


class SumBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, h):
        return h + self.f(h)


class FixedHead(nn.Module):
    def __init__(self, d, classes):
        super().__init__()
        self.register_buffer("projection", torch.randn(d, classes))

    def forward(self, h):
        return h @ self.projection


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), *[SumBlock(40) for _ in range(3)], FixedHead(40, 10))
"""


def test_a_model_with_nothing_to_train_outside_its_blocks_has_no_control_to_train():
    model = _built(ALL_BLOCKS_SOURCE)
    with pytest.raises(ModelInterfaceError) as info:
        pytest_fa.frozen_control(model, blocks="[1-3]")
    message = str(info.value)
    assert "no trainable parameter outside the blocks' weights" in message
    assert "setting `frozen_acc=ACC`" in message


@pytest.fixture
def all_blocks_factory(tmp_path, monkeypatch, small_data):
    """A plain state dict of a model whose only parameters are block weights, its factory,
    and the small MNIST-1D set served for the plain state dict's data."""
    name = f"fa_all_blocks_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(ALL_BLOCKS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    path = tmp_path / "all_blocks.pt"
    torch.save(importlib.import_module(name).build().state_dict(), path)
    monkeypatch.setattr(protocol, "load_dataset", lambda name, *, root=None, **config: small_data)
    yield name, path
    sys.modules.pop(name, None)


def test_frozen_epochs_on_a_model_with_nothing_to_train_outside_its_blocks_is_a_clear_error(all_blocks_factory, tmp_path):
    name, path = all_blocks_factory
    runner = ProtocolRunner(ProtocolSettings(model_factory=f"{name}:build", hidden="0, [1-3]", data="mnist1d",
                                             device="cpu", frozen_epochs=1, cache_dir=str(tmp_path)))
    with pytest.raises(ModelInterfaceError) as info, warnings.catch_warnings():
        warnings.simplefilter("ignore", FABudgetWarning)
        runner.frozen_baseline(str(path))
    message = str(info.value)
    assert "a frozen-blocks control cannot be trained for it" in message and "setting `frozen_acc=ACC`" in message


def _budget(bundle_epochs, frozen_epochs, plain=False):
    bundle = None
    if not plain:
        bundle = Bundle(arch="resmlp", arch_config={"d": 16}, state_dict={}, method="dfa", data={"name": "mnist1d"},
                        seed=1, epochs=bundle_epochs, recipe={"lr": 0.01})
    run = SimpleNamespace(bundle=bundle, loaded=SimpleNamespace(path="runs/dfa.pt"))
    runner = ProtocolRunner(ProtocolSettings(device="cpu", frozen_epochs=frozen_epochs, model_factory="m:build"))
    return runner._baseline_budget(run)


def test_frozen_epochs_that_differ_from_the_bundles_budget_are_warned_about_and_not_used():
    with pytest.warns(FABudgetWarning) as record:
        recipe, epochs, *_ = _budget(10, 2)
    assert epochs == 10 and recipe == {"lr": 0.01}
    message = str(record[0].message)
    assert "setting `frozen_epochs=2` is not used for runs/dfa.pt" in message and "10 epochs" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error", FABudgetWarning)
        assert _budget(10, 10)[1] == 10 and _budget(10, None)[1] == 10


def test_a_budget_the_checkpoint_does_not_record_is_warned_about():
    with pytest.warns(FABudgetWarning) as record:
        _, epochs, *_ = _budget(None, 2, plain=True)
    assert epochs == 2
    message = str(record[0].message)
    assert "trained for 2 epochs" in message and "runs/dfa.pt records no training budget and no recipe" in message
    assert "inflates (d)'s margin" in message and "setting `frozen_acc=ACC`" in message


def test_a_bundle_without_recorded_epochs_keeps_its_architecture_and_recipe():
    with pytest.warns(FABudgetWarning, match="with its recorded recipe: runs/dfa.pt records no training budget"):
        recipe, epochs, _, arch, config = _budget(None, 2)
    assert (recipe, epochs, arch, config) == ({"lr": 0.01}, 2, "resmlp", {"d": 16})


@pytest.mark.parametrize(("plain", "what"), [(True, "a plain state dict"), (False, "a pytest-fa bundle without epochs")])
def test_without_a_budget_the_error_says_what_the_checkpoint_is(plain, what):
    """A bundle that records no epochs was called "a plain state dict"."""
    with pytest.raises(protocol._MissingBudget) as info:
        _budget(None, None, plain=plain)
    assert f"runs/dfa.pt records no training budget ({what}). Pass setting `frozen_acc=ACC`" in str(info.value)


def test_assert_beats_frozen_warns_when_the_stated_budgets_differ():
    with pytest.warns(FABudgetWarning, match="control was trained for 2 epochs but the model for 10"):
        assert_beats_frozen(0.9, 0.5, trained_epochs=10, frozen_epochs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FABudgetWarning)
        assert_beats_frozen(0.9, 0.5, trained_epochs=10, frozen_epochs=10)
        assert_beats_frozen(0.9, 0.5)
