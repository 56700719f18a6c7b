"""The hook adapter: third-party models read at named states, equal to the duck-typed path."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torchvision
from torch import nn

import pytest_fa
from pytest_fa.core.adapter import HookedModel, adapt, match_path, resolve_states
from pytest_fa.core.credit import DFACredit, init_dfa_feedback
from pytest_fa.core.interface import block_weights
from pytest_fa.core.probe import run_probe
from pytest_fa.errors import ModelInterfaceError
from pytest_fa.models import build_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SAMPLES = 8 * 32


def _data(shape, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(SAMPLES, *shape, generator=g), torch.randint(0, classes, (SAMPLES,), generator=g)


def _check(model, data, **kwargs):
    return pytest_fa.check(model, data, batch_size=32, frozen_acc=0.1, **kwargs)


class SumBlock(nn.Module):
    """Returns the stream: ``h + f(h)``."""

    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, h):
        return h + self.branch(h)


def _branch(d=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))


class BranchNet(nn.Module):
    """Blocks return ``f(h)``; the parent adds it to the stream."""

    def __init__(self, branches, d=16, seed=0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.stem = nn.Linear(12, d)
        self.layers = nn.ModuleList(branches)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 10)

    def forward(self, x):
        h = self.stem(x)
        for f in self.layers:
            h = h + f(h)
        return self.fc(self.ln(h))


def _pair():
    """The same network written with branch-returning and with sum-returning blocks."""
    branches = [_branch(seed=s) for s in range(3)]
    branch_net = BranchNet(branches)
    torch.manual_seed(0)
    sum_net = nn.Sequential(nn.Linear(12, 16), *[SumBlock(f) for f in branches], nn.LayerNorm(16), nn.Linear(16, 10))
    sum_net[0].load_state_dict(branch_net.stem.state_dict())
    sum_net[4].load_state_dict(branch_net.ln.state_dict())
    sum_net[5].load_state_dict(branch_net.fc.state_dict())
    return branch_net.eval(), sum_net.eval()


# -- the acceptance: duck-typed vs adapted, and third-party models ----------------------------
def test_the_adapter_gives_the_duck_typed_numbers_on_the_resmlp():
    torch.manual_seed(3)
    model = build_model("resmlp", input_shape=[12], num_classes=10, d=16, depth=3).eval()
    credit = DFACredit(init_dfa_feedback(10, [16] * 4, torch.Generator().manual_seed(1)))
    data = _data([12])
    duck = _check(model, data, credit=credit)
    adapted = adapt(model, ["embed", "blocks.*"])
    hooked = _check(adapted, data, credit=credit)
    assert adapted.block_output == "auto" and adapted._mode == "branch"
    assert hooked.verdict == duck.verdict
    for a, b in zip(duck.layers, hooked.layers, strict=True):
        torch.testing.assert_close(
            [a.h_norm, a.g_norm, a.gain, a.gamma, a.null_mean, a.null_std],
            [b.h_norm, b.g_norm, b.gain, b.gamma, b.null_mean, b.null_std], rtol=1e-6, atol=0,
        )
    for key in "abcd":
        assert hooked.diagnostics[key].value == pytest.approx(duck.diagnostics[key].value, rel=1e-6)
    assert hooked.context["states"] == ["embed", "blocks.0", "blocks.1", "blocks.2"]


def test_a_trained_duck_typed_bundle_reads_the_same_through_the_adapter(dfa_trained, small_data):
    result, _ = dfa_trained
    model = result.model.eval()
    credit = DFACredit(result.state.feedback)
    batches = pytest_fa.eval_batches(small_data, 8, 128, seed=0)
    duck = pytest_fa.diagnose(model, batches, credit=credit, frozen_acc=0.5, headline_acc=0.6, null_draws=0)
    hooked = pytest_fa.diagnose(adapt(model, "embed, blocks.*"), batches, credit=credit, frozen_acc=0.5,
                                headline_acc=0.6, null_draws=0)
    assert [r.gamma for r in hooked.layers] == pytest.approx([r.gamma for r in duck.layers], rel=1e-6)
    assert [r.g_norm for r in hooked.layers] == pytest.approx([r.g_norm for r in duck.layers], rel=1e-6)
    assert hooked.verdict == duck.verdict


def test_branch_and_sum_blocks_of_one_network_give_one_report():
    branch_net, sum_net = _pair()
    data = _data([12])
    torch.testing.assert_close(branch_net(data[0]), sum_net(data[0]))
    branch = adapt(branch_net, ["stem", "layers.*"])
    summed = adapt(sum_net, ["0", "[1-3]"])
    rb, rs = _check(branch, data), _check(summed, data)
    assert (branch._mode, summed._mode) == ("branch", "sum")
    assert len(rb.layers) == len(rs.layers) == 4
    for a, b in zip(rb.layers, rs.layers, strict=True):
        assert (a.h_norm, a.g_norm) == pytest.approx((b.h_norm, b.g_norm), rel=1e-5)


def test_branch_mode_reads_the_exact_stream_and_its_gradient():
    branch_net, _ = _pair()
    x, y = _data([12])
    logits, hiddens = adapt(branch_net, ["stem", "layers.*"])(x, return_hidden=True)
    h = branch_net.stem(x)
    expected = [h]
    for f in branch_net.layers:
        h = h + f(h)
        expected.append(h)
    for got, want in zip(hiddens, expected, strict=True):
        assert torch.equal(got, want)
    grads = torch.autograd.grad(nn.functional.cross_entropy(logits, y), hiddens)
    want_grads = torch.autograd.grad(nn.functional.cross_entropy(branch_net.fc(branch_net.ln(h)), y), expected)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_torchvision_vision_transformer_is_read_over_all_tokens_at_the_cls_token_or_the_mean():
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts the head at zero
    data = _data([3, 16, 16])
    every = _check(adapt(vit, ["encoder.dropout", "encoder.layers.*"]), data)
    cls = _check(adapt(vit, ["encoder.dropout", "encoder.layers.*"], pooling="cls"), data)
    mean = _check(adapt(vit, ["encoder.dropout", "encoder.layers.*"], pooling="mean"), data)
    assert len(every.layers) == len(cls.layers) == len(mean.layers) == 4
    assert (every.layout, cls.layout, mean.layout) == ("tokens_all", "tokens", "tokens_mean")
    assert "over all tokens" in str(every) and "cls token" in str(cls) and "mean over tokens" in str(mean)
    assert len({every.layers[0].h_norm, cls.layers[0].h_norm, mean.layers[0].h_norm}) == 3
    assert all(row.g_norm > 0 for row in cls.layers)


def test_a_torchvision_vit_with_its_zero_initialised_head_is_mode_1():
    vit = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    ).eval()
    report = _check(adapt(vit, "encoder.dropout, encoder.layers.*"), _data([3, 16, 16]))
    assert report.diagnostics["b"].fires and "Mode 1" in report.diagnostics["b"].submode


def test_a_torchvision_resnet_is_read_at_every_basic_block():
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).eval()
    adapted = adapt(resnet, ["maxpool", "layer*.*"])
    report = _check(adapted, _data([3, 32, 32]))
    assert len(report.layers) == 9 and adapted._mode == "sum"
    assert report.layout == "spatial"
    assert report.context["states"][:3] == ["maxpool", "layer1.0", "layer1.1"]
    frozen = {id(p) for p in block_weights(adapted)}
    assert all(id(p) in frozen for p in resnet.layer4[1].conv2.parameters())
    assert not any(id(p) in frozen for p in resnet.layer4[1].bn2.parameters())
    assert not any(id(p) in frozen for p in resnet.fc.parameters())


def test_an_nn_sequential_residual_mlp_gets_a_report():
    _, sum_net = _pair()
    report = _check(adapt(sum_net, "0, 1, 2, 3"), _data([12]))
    assert len(report.layers) == 4 and report.layout == "vector"


# -- what the wrapper leaves alone ------------------------------------------------------------
def test_the_wrapper_is_the_model_outside_return_hidden():
    branch_net, _ = _pair()
    adapted = adapt(branch_net, ["stem", "layers.*"])
    x, _ = _data([12])
    assert torch.equal(adapted(x), branch_net(x))
    assert adapted._record is None
    assert list(adapted.state_dict()) == ["model." + k for k in branch_net.state_dict()]
    assert [n for n, _ in adapted.named_parameters()] == ["model." + n for n, _ in branch_net.named_parameters()]


def test_glob_patterns_match_one_segment_at_a_time():
    assert match_path("blocks.*", "blocks.3")
    assert not match_path("blocks.*", "blocks.3.ln")
    assert match_path("**.ln", "blocks.3.ln") and match_path("**.ln", "ln")
    assert match_path("layer[12].*", "layer2.0") and not match_path("layer[12].*", "layer3.0")
    branch_net, _ = _pair()
    assert [n for n, _ in resolve_states(branch_net, ["stem", "layers.*", "stem"])] == [
        "stem", "layers.0", "layers.1", "layers.2"
    ]


# -- bad inputs ------------------------------------------------------------------------------
def test_a_pattern_that_matches_nothing_names_what_exists():
    branch_net, _ = _pair()
    with pytest.raises(ModelInterfaceError, match=r"'blocks\.\*' matches no module of BranchNet.*'layers'"):
        adapt(branch_net, ["stem", "blocks.*"])
    with pytest.raises(ModelInterfaceError, match="at least one block"):
        adapt(branch_net, ["stem"])
    with pytest.raises(ModelInterfaceError, match="no states named"):
        adapt(branch_net, " , ")


def test_states_that_are_not_one_stream_are_refused():
    branch_net, _ = _pair()
    x, _ = _data([12])
    with pytest.raises(ModelInterfaceError, match="not one residual stream"):
        adapt(branch_net, ["stem", "layers.0", "layers.1.1"])(x, return_hidden=True)
    with pytest.raises(ModelInterfaceError, match="first block 'layers.1' is not the output of 'layers.0.0'"):
        adapt(branch_net, ["layers.0.0", "layers.1", "layers.2"])(x, return_hidden=True)
    with pytest.raises(ModelInterfaceError, match=r"ran in the order \['layers.0', 'layers.1', 'layers.2', 'ln'\]"):
        adapt(branch_net, ["ln", "layers.*"])(x, return_hidden=True)


def test_a_wrong_block_output_is_refused_with_the_right_one():
    branch_net, sum_net = _pair()
    x, _ = _data([12])
    with pytest.raises(ModelInterfaceError, match="set block_output='branch'"):
        adapt(branch_net, ["stem", "layers.*"], block_output="sum")(x, return_hidden=True)
    with pytest.raises(ModelInterfaceError, match="set block_output='sum'"):
        adapt(sum_net, ["0", "[1-3]"], block_output="branch")(x, return_hidden=True)
    with pytest.raises(ModelInterfaceError, match="one block"):
        adapt(sum_net, ["0", "1"])(x, return_hidden=True)
    assert len(adapt(sum_net, ["0", "1"], block_output="sum")(x, return_hidden=True)[1]) == 2
    with pytest.raises(ModelInterfaceError, match="block_output='both'"):
        adapt(sum_net, ["0", "1"], block_output="both")
    with pytest.raises(ModelInterfaceError, match="pooling='max'"):
        adapt(sum_net, ["0", "1"], pooling="max")


class SequenceFirst(nn.Module):
    """Token states laid out (T, B, d): the batch is not the first dimension."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.blocks = nn.ModuleList(SumBlock(_branch(seed=s)) for s in range(2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.embed(x).reshape(len(x), 1, 16).transpose(0, 1).expand(3, -1, -1)
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(0))


class Unused(nn.Module):
    """The last named block runs, but its output never reaches the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(12, 16)
        self.blocks = nn.ModuleList(SumBlock(_branch(seed=s)) for s in range(3))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.blocks[1](self.blocks[0](self.embed(x)))
        self.blocks[2](h)
        return self.head(h)


class CutUpstream(Unused):
    """The stream is cut after block 1: nothing before it reaches the logits."""

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h).detach() if block is self.blocks[1] else block(h)
        return self.head(h)


class Detaching(Unused):
    """Block 1 hands on a detached copy of its output."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks[1].register_forward_hook(lambda module, args, out: out.detach())

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class Twice(Unused):
    def forward(self, x):
        h = self.embed(x)
        for block in [*self.blocks, self.blocks[2]]:
            h = block(h)
        return self.head(h)


class InPlace(Unused):
    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(torch.relu_(h))


class TupleOut(Unused):
    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h), h


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (SequenceFirst(), r"'blocks.0' has shape \(3, 256, 16\) for a batch of 256"),
        (Unused(), r"h_3 \('blocks.2'\) is not on the path from the input to the logits"),
        (CutUpstream(), r"h_0 \('embed'\) is not on the path"),
        (Detaching(), r"h_2 \('blocks.1'\) is detached from the graph"),
        (Twice(), r"\['blocks.2'\] ran more than once"),
        (InPlace(), "'blocks.2' was overwritten in place"),
        (TupleOut(), "returned tuple, not a logits tensor; pass adapt"),
    ],
    ids=["batch-not-first", "not-on-path", "cut-upstream", "detached", "twice", "in-place", "tuple-logits"],
)
def test_a_graph_the_protocol_cannot_read_is_refused(model, match):
    x, y = _data([12])
    adapted = adapt(model.eval(), ["embed", "blocks.*"], block_output="sum")
    with pytest.raises(ModelInterfaceError, match=match):
        run_probe(adapted, [(x[:256], y[:256])] * 2)


def test_logits_can_be_picked_out_of_what_the_model_returns():
    model = TupleOut().eval()
    report = _check(adapt(model, ["embed", "blocks.*"], logits=lambda out: out[0]), _data([12]))
    assert len(report.layers) == 4


def test_a_model_without_return_hidden_is_pointed_to_the_adapter():
    _, sum_net = _pair()
    with pytest.raises(ModelInterfaceError, match=r"pytest_fa.adapt\(model"):
        _check(sum_net, _data([12]))
    with pytest.raises(ModelInterfaceError, match="adapted already"):
        adapt(adapt(sum_net, "0, 1, 2"), "0, 1")
    assert isinstance(adapt(sum_net, "0,1,2"), HookedModel)


# -- the command line --------------------------------------------------------------------------
FACTORY = """
import torch
from torch import nn


class SumBlock(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.f = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))

    def forward(self, h):
        return h + self.f(h)


def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), *[SumBlock(32) for _ in range(3)],
                         nn.LayerNorm(32), nn.Linear(32, 10))
"""


def test_fa_hidden_adapts_a_plain_state_dict_from_the_command_line(pytester):
    pytester.makepyfile(seqfactory=FACTORY)
    pytester.syspathinsert()
    import importlib

    build = importlib.import_module("seqfactory").build
    torch.save(build().state_dict(), pytester.path / "seq.pt")
    args = ["--fa-checkpoint=seq.pt", "--fa-model=seqfactory:build", "--fa-frozen-acc=0.1",
            "--fa-report-json=report.json", "-p", "no:cacheprovider"]
    refused = pytester.runpytest_subprocess(*args)
    refused.stdout.fnmatch_lines(["*does not accept `return_hidden`*--fa-hidden=*"])
    result = pytester.runpytest_subprocess(*args, "--fa-hidden=1, [2-4]")
    report = json.loads((pytester.path / "report.json").read_text())["reports"][0]
    assert len(report["layers"]) == 4
    assert report["context"]["states"] == ["1", "2", "3", "4"]
    result.stdout.fnmatch_lines(["*states h_0..h_3 = 1, 2, 3, 4*"])
    bad = pytester.runpytest_subprocess(*args, "--fa-hidden=1,blocks.*")
    bad.stdout.fnmatch_lines(["*'blocks.*' matches no module of Sequential*"])
    pytester.makeini("[pytest]\nfa_hidden = 1, [2-4]\nfa_pooling = mean\n")
    from_ini = pytester.runpytest_subprocess(*args)
    from_ini.stdout.fnmatch_lines(["*states h_0..h_3 = 1, 2, 3, 4*"])
    usage = pytester.runpytest_subprocess(*args, "--fa-hidden=1,2", "--fa-block-output=both")
    usage.stderr.fnmatch_lines(["*--fa-block-output='both': use one of auto, sum, branch*"])


def test_a_copy_of_the_adapted_model_reads_its_own_states():
    import copy

    branch_net, _ = _pair()
    adapted = adapt(branch_net, ["stem", "layers.*"])
    twin = copy.deepcopy(adapted)
    x, _ = _data([12])
    with torch.no_grad():
        twin.model.stem.weight.mul_(2)
    _, ours = adapted(x, return_hidden=True)
    _, theirs = twin(x, return_hidden=True)
    assert len(theirs) == 4 and not torch.equal(ours[0], theirs[0])
    assert not branch_net.stem._forward_hooks and not twin.model.stem._forward_hooks


# -- the states must be one residual stream ----------------------------------------------------
def test_a_terminal_norm_named_as_a_block_is_refused_and_named_as_the_norm():
    # a collapsed stream: h_0 ~ 1e6, so the terminal LN's backward gain is ~1e-6 and (b) fires
    torch.manual_seed(3)
    model = build_model("resmlp", input_shape=[12], num_classes=10, d=16, depth=3).eval()
    with torch.no_grad():
        model.embed.weight.mul_(1e6)
        model.embed.bias.mul_(1e6)
    report = _check(adapt(model, "embed, blocks.*"), _data([12]))
    assert report.diagnostics["b"].fires and "Mode 1" in report.diagnostics["b"].submode
    # read after the LN, the gradient is not collapsed: the chain must be refused, not measured
    with pytest.raises(ModelInterfaceError, match=r"'out_ln' is a LayerNorm, a normalisation layer, not a "
                       r"residual block.*leave it out of the states.*norm='out_ln'"):
        adapt(model, "embed, blocks.*, out_ln")


class T5LayerNorm(nn.Module):
    """A norm of a third-party library: recognised by its class name."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, h):
        return self.weight * h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)


@pytest.mark.parametrize("norm", [nn.BatchNorm1d(16), nn.RMSNorm(16), nn.GroupNorm(4, 16), T5LayerNorm(16)],
                         ids=["batchnorm", "rmsnorm", "groupnorm", "named"])
def test_a_normalisation_layer_is_never_a_block(norm):
    _, sum_net = _pair()
    sum_net[4] = norm
    with pytest.raises(ModelInterfaceError, match=rf"state '4' is a {type(norm).__name__}.*norm='4'"):
        adapt(sum_net, "0, [1-4]")
    assert isinstance(adapt(nn.Sequential(norm, *sum_net[1:4]), "0, [1-3]"), HookedModel)  # h_0 may be one


class PlainStack(nn.Module):
    """Layers that each feed the next: no skip path, no residual stream."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Linear(12, 16)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(16, 16), nn.GELU()) for _ in range(3))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        h = self.embed(x)
        for block in self.blocks:
            h = block(h)
        return self.head(h)


class Readout(nn.Module):
    """A terminal norm and projection wrapped in a module of their own."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(16)
        self.proj = nn.Linear(16, 16)

    def forward(self, h):
        return self.proj(self.ln(h))


class BranchWithReadout(BranchNet):
    def __init__(self) -> None:
        super().__init__([_branch(seed=s) for s in range(3)])
        self.readout = Readout()

    def forward(self, x):
        h = self.stem(x)
        for f in self.layers:
            h = h + f(h)
        return self.fc(self.readout(h))


@pytest.mark.parametrize(
    ("model", "states", "options", "match"),
    [
        (nn.Sequential(nn.Linear(12, 16), *[nn.Linear(16, 16) for _ in range(3)], nn.Linear(16, 10)),
         "0, [1-3]", {}, "block '1' is not a residual block: its forward returns no sum h \\+ f\\(h\\)"),
        (PlainStack(), "embed, blocks.*", {}, "block 'blocks.0' is not a residual block"),
        (PlainStack(), "embed, blocks.0", {"block_output": "sum"}, "block 'blocks.0' is not a residual block"),
        (BranchWithReadout(), "stem, layers.*, readout", {},
         "block 'readout' is not a residual block: its output f\\(h\\) is never added to its input h"),
        (BranchWithReadout(), "stem, layers.*, readout", {"block_output": "branch"},
         "block 'readout' is not a residual block.*leave out layers that transform the stream"),
    ],
    ids=["linear-stack", "mlp-stack", "one-plain-block", "readout-auto", "readout-branch"],
)
def test_a_chain_that_is_not_a_residual_stream_is_refused(model, states, options, match):
    x, y = _data([12])
    adapted = adapt(model.eval(), states, **options)
    with pytest.raises(ModelInterfaceError, match=match):
        run_probe(adapted, [(x[:32], y[:32])] * 2)


class PreNorm(nn.Module):
    """A branch whose class name ends in Norm but which is no norm: LN, then the MLP."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.f = _branch(seed=seed)

    def forward(self, h):
        return self.f(h)


def test_a_residual_branch_whose_class_name_ends_in_norm_is_accepted():
    branch_net = BranchNet([PreNorm(s) for s in range(3)]).eval()
    adapted = adapt(branch_net, "stem, layers.*")
    x, _ = _data([12])
    assert len(adapted(x, return_hidden=True)[1]) == 4 and adapted._mode == "branch"


def test_the_first_pass_reads_the_structure_without_touching_running_statistics():
    import copy

    torch.manual_seed(0)
    blocks = [SumBlock(nn.Sequential(nn.BatchNorm1d(16), nn.Linear(16, 16))) for _ in range(2)]
    model = nn.Sequential(nn.Linear(12, 16), *blocks, nn.Linear(16, 10)).train()
    twin = copy.deepcopy(model)
    x, _ = _data([12])
    twin(x)  # one training-mode forward pass
    adapt(model, "0, 1, 2")(x, return_hidden=True)
    for ours, theirs in zip(model.modules(), twin.modules(), strict=True):
        if isinstance(ours, nn.BatchNorm1d):
            assert torch.equal(ours.running_mean, theirs.running_mean) and ours.num_batches_tracked == 1
    assert all(m.training for m in model.modules())


class _CallsForwardDirectly(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer_0, self.layer_1, self.head = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = self.layer_0.forward(x)  # bypasses the forward hooks
        return self.head(h + self.layer_1.forward(h))


def test_states_that_did_not_run_name_a_direct_forward_call_as_a_cause():
    with pytest.raises(ModelInterfaceError) as info:
        adapt(_CallsForwardDirectly(), "layer_0, layer_1")(torch.randn(2, 4), return_hidden=True)
    message = str(info.value)
    assert "['layer_0', 'layer_1'] did not run" in message
    assert "`layer.forward(x)` bypasses the forward hooks" in message and "call the module, `layer(x)`" in message


def _token_norm_medians(states):
    """By hand: the L2 norm of each sample's ``(T, d)`` state, median over samples."""
    return [float(torch.linalg.vector_norm(s.detach().double().flatten(1), dim=-1).median()) for s in states]


def _check_all_tokens(model, at_cls, batches, hand_states, d=16):
    """The probe's per-layer median ‖h_l‖ and ‖g_l‖ equal the hand computation, the median
    over samples of the norm over all tokens; Γ stays one cosine per sample (cls token)."""
    feedback = init_dfa_feedback(10, [d] * 3, torch.Generator().manual_seed(1))
    probe = run_probe(model, batches, credit=DFACredit(feedback))
    assert probe.layout == "tokens_all"
    hidden, grads = [], []
    for x, y in batches:
        logits, states = hand_states(x, y)
        hidden.append(states)
        grads.append(torch.autograd.grad(nn.functional.cross_entropy(logits, y), states))
    samples, tokens = sum(len(y) for _, y in batches), hidden[0][0].shape[1]
    for layer in range(3):
        assert probe.hidden_norms[layer].shape == (samples,)
        assert probe.grad_norms[layer].shape == probe.cosines[layer].shape == (samples,)
        h_hand = _token_norm_medians([torch.cat([b[layer] for b in hidden])])[0]
        g_hand = _token_norm_medians([torch.cat([b[layer] for b in grads])])[0]
        assert float(probe.hidden_norms[layer].median()) == pytest.approx(h_hand, rel=1e-9)
        assert float(probe.grad_norms[layer].median()) == pytest.approx(g_hand, rel=1e-9, abs=1e-300)
    # the head reads the cls token alone, so h_L's other tokens get no gradient: ‖g_L‖ over all
    # tokens is the cls token's, where a median over tokens would read 0 and fire (b)
    cls_probe = run_probe(at_cls, batches)
    assert cls_probe.layout == "tokens"
    torch.testing.assert_close(probe.grad_norms[-1], cls_probe.grad_norms[-1], rtol=1e-12, atol=0)
    assert (probe.grad_norms[-1] > 0).all() and tokens >= 3


def test_vit_mini_states_read_over_all_tokens_equal_the_hand_medians():
    torch.manual_seed(0)
    vit = build_model("vit-mini", input_shape=[40], num_classes=10, d=16, depth=2, heads=2).eval()
    all_tokens = copy.deepcopy(vit)
    vit.hidden_layout = "tokens"
    x, y = _data([40])
    batches = [(x[:32], y[:32]), (x[32:64], y[32:64])]

    def hand_states(x, y):
        h = vit.embed_input(x)
        states = [h]
        for block in vit.blocks:
            h = h + block(h)
            states.append(h)
        return vit.read_logits(h), states

    _check_all_tokens(all_tokens, vit, batches, hand_states)


def test_a_timm_vit_adapted_with_pooling_all_equals_the_hand_medians():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, img_size=16, patch_size=8,
                            depth=2, embed_dim=16, num_heads=2).eval()
    model = adapt(vit, ["norm_pre", "blocks.*"], norm="norm", head="head", pooling="all")
    x, y = _data([3, 16, 16])
    batches = [(x[:32], y[:32]), (x[32:64], y[32:64])]

    def hand_states(x, y):
        h = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
        states = [h]
        for block in vit.blocks:
            h = block(h)
            states.append(h)
        return vit.forward_head(vit.norm(h)), states

    _check_all_tokens(model, adapt(vit, ["norm_pre", "blocks.*"], norm="norm", head="head", pooling="cls"),
                      batches, hand_states)
    report = _check(model, (x, y))  # all 256 samples, 8 batches of 32
    assert report.layout == "tokens_all" and "over all tokens" in str(report)
    assert report.layers[0].h_norm == pytest.approx(_token_norm_medians([hand_states(x, y)[1][0]])[0], rel=1e-9)
