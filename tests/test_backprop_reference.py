"""A reference that is backprop, or none: a model whose autograd is its method's backward
(custom autograd.Function, backward hooks, feedback weights: biotorch's layers) is refused,
and a twin that backpropagates truly with the same weights gives the reference instead."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
from torch import nn

import pytest_fa
from pytest_fa.core.backprop import BackpropCheck, bp_twin, non_backprop_parts
from pytest_fa.core.credit import DFACredit, OwnBackwardCredit, init_dfa_feedback
from pytest_fa.core.reference import reference_pass
from pytest_fa.errors import ModelInterfaceError, NotBackpropError

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:Using a non-full backward hook"),
]

D, DEPTH, IN, CLASSES, BATCH = 16, 3, 12, 10, 16
BIOTORCH_MODES = ["fa", "dfa", "usf", "brsf", "frsf"]


class Block(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(h)))


class Net(nn.Module):
    """A residual MLP as a user writes it (no pytest-fa interface)."""

    def __init__(self, d: int = D, depth: int = DEPTH, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Linear(IN, d)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, CLASSES)

    def forward(self, x):
        return self.head(self.norm(self.blocks(self.embed(x))))


def data(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8 * BATCH, IN, generator=g), torch.randint(0, CLASSES, (8 * BATCH,), generator=g)


def check(model, **kwargs):
    return pytest_fa.check(model, data(), batch_size=BATCH, frozen_acc=0.1, **kwargs)


def biotorch_model(mode: str, d: int = D, seed: int = 0) -> nn.Module:
    """``BioModule(Net(), mode)`` exactly as biotorch's converter returns it."""
    biomodule = pytest.importorskip("biotorch.module.biomodule")
    with contextlib.redirect_stdout(io.StringIO()):  # the converter prints a summary
        return biomodule.BioModule(Net(d, seed=seed), mode=mode, output_dim=CLASSES)


def adapted(model: nn.Module) -> nn.Module:
    prefix = "module." if hasattr(model, "module") else ""
    return pytest_fa.adapt(model, [f"{prefix}embed", f"{prefix}blocks.*"],
                           norm=f"{prefix}norm", head=f"{prefix}head")


def plain_copy(bio: nn.Module) -> Net:
    """The hand-made twin: the user's own network with biotorch's forward weights."""
    net = Net()
    net.load_state_dict({k.removeprefix("module."): v for k, v in bio.state_dict().items()
                         if not k.endswith("_backward")})
    return net


def refusal(model) -> str:
    with pytest.raises(NotBackpropError) as info:
        check(model)
    return str(info.value)


# -- refused: the method's backward ------------------------------------------------------------
class _Doubled(torch.autograd.Function):
    """Forward: identity. Backward: twice the gradient (not the chain rule of the forward)."""

    @staticmethod
    def forward(ctx, h):
        return h.clone()

    @staticmethod
    def backward(ctx, grad):
        return 2 * grad


class Doubling(nn.Module):
    def forward(self, h):
        return _Doubled.apply(h)


def test_a_custom_function_between_the_states_is_refused_naming_it_and_the_ways_forward():
    net = Net()
    net.blocks[1].fc2 = nn.Sequential(net.blocks[1].fc2, Doubling())
    message = refusal(adapted(net))
    assert "autograd on Net is not backprop" in message
    assert f"'blocks.1.fc2.1' ({__name__}.Doubling): a custom autograd.Function {__name__}._Doubled" in message
    assert "compare the method with itself" in message
    assert "setting `reference_model`" in message and "bp_twin" in message
    assert "setting `credit=own-backward`" in message


def test_a_full_backward_hook_on_a_block_is_refused():
    net = Net()
    net.blocks[2].fc1.register_full_backward_hook(lambda module, grad_in, grad_out: (2 * grad_in[0],))
    assert "'blocks.2.fc1' (torch.nn.modules.linear.Linear): a backward hook" in refusal(adapted(net))


def test_hooks_below_h0_change_no_g_l_and_pass_but_a_pre_hook_at_h0_is_refused():
    plain = check(adapted(Net()))
    below = Net()  # a full hook on the module writing h_0 changes only gradients below h_0
    below.embed.register_full_backward_hook(lambda module, grad_in, grad_out: (3 * grad_in[0],))
    assert [r.g_norm for r in check(adapted(below)).layers] == [r.g_norm for r in plain.layers]
    at_h0 = Net()  # a pre-hook rewrites the gradient at the module's output, h_0 itself
    at_h0.embed.register_full_backward_pre_hook(lambda module, grad_out: (3 * grad_out[0],))
    assert "'embed' (torch.nn.modules.linear.Linear): a backward hook" in refusal(adapted(at_h0))


class HookedBlock(Block):
    """A block that rewrites a gradient with a tensor hook inside its forward."""

    def __init__(self, d: int, on_output: bool) -> None:
        super().__init__(d)
        self.on_output = on_output

    def forward(self, h):
        inner = self.fc1(h)
        out = h + self.fc2(self.act(inner))
        if out.requires_grad:
            (out if self.on_output else inner).register_hook(lambda grad: 2 * grad)
        return out


@pytest.mark.parametrize("on_output, expected", [
    (False, "a tensor hook on the output of AddmmBackward0 in 'blocks.1.fc1'"),
    (True, "a tensor hook on h_2 ('blocks.1')"),
])
def test_a_tensor_hook_inside_the_forward_pass_is_refused(on_output, expected):
    net = Net()
    net.blocks[1] = HookedBlock(D, on_output)
    assert expected in refusal(adapted(net))


def test_a_global_module_backward_hook_is_refused():
    handle = torch.nn.modules.module.register_module_full_backward_hook(lambda module, grad_in, grad_out: None)
    try:
        assert "a global module backward hook" in refusal(adapted(Net()))
    finally:
        handle.remove()


def test_plain_models_native_and_adapted_pass_the_check_once():
    from pytest_fa.models import build_model

    native = build_model("resmlp", input_shape=(IN,), d=D, depth=DEPTH, num_classes=CLASSES)
    x, y = data()
    for model in (native, adapted(Net())):
        logits, states = model(x[:BATCH], return_hidden=True)
        assert non_backprop_parts(model, logits, states) == []
        assert BackpropCheck(model).active
        reference_pass(model, x[:BATCH], y[:BATCH])
        assert not BackpropCheck(model).active  # the structure is read once per model


# -- biotorch, exactly as its converter returns it ---------------------------------------------
@pytest.mark.parametrize("mode", BIOTORCH_MODES)
def test_biotorch_models_are_refused_naming_their_layers(mode):
    message = refusal(adapted(biotorch_model(mode)))
    assert "autograd on BioModule is not backprop" in message
    listed = "'module.blocks.0.fc1', 'module.blocks.0.fc2', 'module.blocks.1.fc1' and 4 more modules (biotorch.layers."
    assert listed in message
    assert "a feedback weight `weight_backward` beside `weight`" in message
    assert "'module.embed'" not in message  # its backward only consumes g_0
    if mode == "dfa":
        assert "a backward hook" in message


@pytest.mark.parametrize("mode", BIOTORCH_MODES)
def test_with_bp_twin_the_numbers_equal_those_of_a_hand_made_plain_copy(mode):
    bio = adapted(biotorch_model(mode))
    feedback = init_dfa_feedback(CLASSES, [D] * (DEPTH + 1), torch.Generator().manual_seed(3))
    ours = check(bio, credit=DFACredit(feedback), reference_model=bp_twin(bio))
    hand = check(adapted(plain_copy(bio.model)), credit=DFACredit(feedback))
    for mine, theirs in zip(ours.layers, hand.layers):
        for field in ("h_norm", "g_norm", "gain", "gamma"):
            assert getattr(mine, field) == pytest.approx(getattr(theirs, field), rel=1e-5), (field, mine.index)
    assert ours.headline_acc == hand.headline_acc and ours.eval_acc == hand.eval_acc
    for key, result in hand.diagnostics.items():
        assert ours.diagnostics[key].value == (None if result.value is None else pytest.approx(result.value, rel=1e-5))
    assert ours.context["reference"].startswith("backprop through the reference model")


def test_the_method_measured_against_its_twin_is_not_measured_against_itself():
    bio = adapted(biotorch_model("fa", d=32))
    report = check(bio, credit=OwnBackwardCredit(bio), reference_model=bp_twin(bio))
    gammas = report.gamma_per_layer
    assert all(g is not None and abs(g) < 0.9 for g in gammas), gammas  # random B_l: Γ ≈ 0 ± 1/√d


def test_bp_twin_leaves_the_model_as_it_is_and_drops_feedback_and_hooks():
    bio = biotorch_model("dfa")
    before = {k: v.clone() for k, v in bio.state_dict().items()}
    twin = bp_twin(bio)
    assert all(torch.equal(v, bio.state_dict()[k]) for k, v in before.items())
    assert type(bio.module.blocks[0].fc1).__module__.startswith("biotorch.")
    assert {type(m) for m in twin.modules() if isinstance(m, nn.Linear)} == {nn.Linear}
    assert not any(m._backward_hooks for m in twin.modules())
    assert not any(name.endswith("_backward") for name in twin.state_dict())
    x, _ = data()
    assert torch.allclose(twin(x), bio.eval()(x), rtol=1e-5, atol=1e-6)


def test_bp_twin_of_a_model_without_biotorch_layers_is_a_clear_error():
    with pytest.raises(ModelInterfaceError, match="Net has no biotorch layer to convert; write its twin yourself"):
        bp_twin(Net())


def test_a_reference_model_that_is_no_twin_is_refused_with_the_difference():
    pytest.importorskip("biotorch")
    bio = adapted(biotorch_model("fa"))
    twin = bp_twin(bio)
    with torch.no_grad():
        twin.model.module.blocks[1].fc2.bias.add_(0.5)
    differ = r"at h_2 \('module.blocks.1'\) the two differ by up to 0.5 \(tolerance"
    with pytest.raises(NotBackpropError, match=differ):
        check(bio, reference_model=twin)


def test_a_reference_model_that_is_not_a_model_is_a_clear_error():
    spec = "pytest_fa.core.backprop:bp_twin"
    with pytest.raises(ModelInterfaceError, match=f"reference_model='{spec}': give the twin itself"):
        check(adapted(Net()), reference_model=spec)


def test_a_twin_that_is_not_backprop_is_refused_too():
    bio = adapted(biotorch_model("fa"))
    with pytest.raises(NotBackpropError, match="autograd on BioModule is not backprop"):
        check(bio, reference_model=bio)


# -- the command line --------------------------------------------------------------------------
FACTORY = """
import torch
from torch import nn
from biotorch.module.biomodule import BioModule


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)

    def forward(self, h):
        return h + self.fc2(self.act(self.fc1(h)))


def build():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.embed = nn.Linear(32, 16)
    net.blocks = nn.Sequential(Block(16), Block(16))
    net.norm, net.head = nn.LayerNorm(16), nn.Linear(16, 10)
    return BioModule(net, mode="fa")
"""


def test_the_command_line_refuses_then_measures_with_the_twin_and_the_own_backward(pytester):
    pytest.importorskip("biotorch")
    pytester.makepyfile(biofactory=FACTORY)
    pytester.syspathinsert()
    import importlib

    torch.save(importlib.import_module("biofactory").build().state_dict(), pytester.path / "bio.pt")
    args = ["--fa-checkpoint=bio.pt", "--fa-model=biofactory:build", "--fa-data=synthetic", "--fa-frozen-acc=0.1",
            "--fa-hidden=module.embed,module.blocks.*", "--fa-batch-size=32", "--fa-report-json=report.json",
            "-p", "no:cacheprovider"]
    refused = pytester.runpytest_subprocess(*args)
    refused.stdout.fnmatch_lines(
        ["*autograd on BioModule is not backprop*--fa-reference-model*--fa-credit=own-backward*"])
    pytester.runpytest_subprocess(*args, "--fa-reference-model=pytest_fa.core.backprop:bp_twin",
                                  "--fa-credit=own-backward")
    report = json.loads((pytester.path / "report.json").read_text())["reports"][0]
    assert report["gamma"]["status"] == "computed"
    assert all(g is not None and abs(g) < 0.9 for g in (row["gamma"] for row in report["layers"]))
    assert report["context"]["reference"].startswith("backprop through the reference model")
