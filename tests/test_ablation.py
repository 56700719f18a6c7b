"""Which block learned (each block removed or reset) and W-vs-B (the angle of each feedback
matrix with the forward weight it stands in for), on hand-built models with known answers."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
from torch import nn

import pytest_fa
from pytest_fa.core.ablation import block_ablation
from pytest_fa.core.credit import DFACredit, FACredit, init_dfa_feedback, init_fa_feedback
from pytest_fa.core.feedback_angle import angle_deg, feedback_angles, weight_backward_angles
from pytest_fa.models import ReferenceModel, build_model
from test_adapter import SumBlock

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Carrier(ReferenceModel):
    """``h_0 = (x_0, 0)``; block 0 writes ``10 x_0`` into the coordinate the head reads and
    clears the other; block 1's branch is zero. Label ``x_0 > 0``, half the samples each."""

    def __init__(self) -> None:
        super().__init__(input_shape=[2], num_classes=2)
        self.embed = nn.Linear(2, 2, bias=False)
        self.blocks = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 2, bias=False)])
        self.out_head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.embed.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
            self.blocks[0].weight.copy_(torch.tensor([[-1.0, 0.0], [10.0, 0.0]]))
            self.blocks[1].weight.zero_()
            self.out_head.weight.copy_(torch.tensor([[0.0, 0.0], [0.0, 1.0]]))

    def read_logits(self, h):
        return self.out_head(h)


def carrier_data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(n // 2, generator=g) + 0.1
    x = torch.stack([torch.cat([x0, -x0]), torch.randn(n, generator=g)], dim=1)
    return x, (x[:, 0] > 0).long()


def states(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)


# -- which block learned -----------------------------------------------------------------------
def test_removing_the_block_that_carries_the_signal_drops_to_chance_and_a_zero_branch_changes_nothing():
    model, (x, y) = Carrier(), carrier_data()
    before = states(model)
    result = block_ablation(model, x, y)
    assert result.status == "ok" and result.accuracy == 1.0 and result.samples == len(y)
    carrier, zero = result.blocks
    assert carrier.removed_drop_pp == 50.0 and carrier.removed_status == "ok"  # 1.0 → 0.5: chance on two classes
    assert zero.removed_drop_pp == 0.0 and zero.removed_status == "ok"
    assert all(not block._forward_hooks for block in model.blocks)
    assert same_state(before, states(model)) and model.training


def test_reset_puts_the_initial_weights_back_for_the_pass_only():
    model, (x, y) = Carrier(), carrier_data()
    initial = copy.deepcopy(model)
    with torch.no_grad():
        initial.blocks[0].weight.zero_()  # block 0 started at zero and learned to carry the signal
    before = states(model)
    result = block_ablation(model, x, y, init_state=initial.state_dict())
    assert [b.reset_drop_pp for b in result.blocks] == [50.0, 0.0]
    assert [b.reset_status for b in result.blocks] == ["ok", "ok"]
    assert same_state(before, states(model))


def test_reset_without_initial_weights_is_not_available_with_the_reason():
    model, (x, y) = Carrier(), carrier_data()
    result = block_ablation(model, x, y, reset_unavailable="a plain state dict records no initial weights")
    assert [b.reset_drop_pp for b in result.blocks] == [None, None]
    assert result.blocks[0].reset_status == "not available: a plain state dict records no initial weights"
    mismatched = block_ablation(model, x, y, init_state={"blocks.0.weight": torch.zeros(3, 3)})
    assert mismatched.blocks[0].reset_status.startswith("not available: init_state has no entry of the right shape")


class Widening(Carrier):
    """Block 1 maps 2 features to 3 (a stage change): its removal has no meaning."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks[1] = nn.Linear(2, 3, bias=False)
        self.out_head = nn.Linear(3, 2, bias=False)

    def forward(self, x, return_hidden=False):
        h = self.embed(x)
        h = h + self.blocks[0](h)
        return self.out_head(self.blocks[1](h))


def test_a_block_that_changes_the_shape_is_not_defined_and_the_others_still_measured():
    model, (x, y) = Widening(), carrier_data()
    before = states(model)
    result = block_ablation(model, x, y)
    assert result.blocks[0].removed_status == "ok" and result.blocks[0].removed_drop_pp is not None
    assert result.blocks[1].removed_drop_pp is None
    assert result.blocks[1].removed_status == (
        "not defined: the block maps (2,) to (3,), so h_{l+1} = h_l is not a state of the model"
    )
    assert same_state(before, states(model)) and not model.blocks[1]._forward_hooks


def test_a_model_without_blocks_is_not_defined_never_a_crash():
    x, y = carrier_data()
    result = block_ablation(nn.Sequential(nn.Linear(2, 2)), x, y)
    assert result.blocks == [] and result.accuracy is None
    assert result.status.startswith("not defined: the blocks cannot be found (Sequential has no `blocks`")


class SumNet(nn.Module):
    """The carrier written as a user writes it: blocks return ``h + f(h)``, no interface."""

    def __init__(self) -> None:
        super().__init__()
        carrier = Carrier()
        self.embed, self.head = carrier.embed, carrier.out_head
        self.layers = nn.Sequential(*(SumBlock(b) for b in carrier.blocks), SumBlock(nn.Linear(2, 2, bias=False)))
        with torch.no_grad():
            self.layers[2].branch.weight.zero_()

    def forward(self, x):
        return self.head(self.layers(self.embed(x)))


def test_an_adapted_model_whose_blocks_return_the_sum_gets_its_input_back():
    model = pytest_fa.adapt(SumNet(), ["embed", "layers.*"], head="head")
    x, y = carrier_data()
    result = block_ablation(model, x, y)
    assert [b.removed_drop_pp for b in result.blocks] == [50.0, 0.0, 0.0]


# -- W-vs-B --------------------------------------------------------------------------------------
def test_the_angle_is_0_180_and_90_degrees_exactly_in_float64():
    w = torch.randn(5, 7, generator=torch.Generator().manual_seed(1))
    assert angle_deg(w, w.clone()) == 0.0
    assert angle_deg(w, -w) == 180.0
    a, b = torch.zeros(4, 4), torch.zeros(4, 4)
    a[:2], b[2:] = w[:2, :4], w[2:4, :4]
    assert angle_deg(a, b) == 90.0
    assert angle_deg(w, torch.zeros_like(w)) is None


def resmlp(d: int = 8, depth: int = 3):
    torch.manual_seed(0)
    return build_model("resmlp", input_shape=[6], num_classes=4, d=d, depth=depth)


def test_fa_matrices_set_to_their_weights_give_0_degrees_and_their_negatives_180():
    model = resmlp()
    weights = [(b.w2.weight @ b.w1.weight).detach() for b in model.blocks] + [model.out_head.weight.detach()]
    rows = feedback_angles(model, weights, "fa")
    assert [status for _, status in rows] == ["ok"] * 4
    assert all(angle == pytest.approx(0.0, abs=1e-3) for angle, _ in rows)  # the product in float32
    assert rows[-1][0] == 0.0
    opposite = feedback_angles(model, [-w for w in weights], "fa")
    assert all(angle == pytest.approx(180.0, abs=1e-3) for angle, _ in opposite) and opposite[-1][0] == 180.0


def test_dfa_defines_only_the_top_matrix():
    model = resmlp()
    feedback = init_dfa_feedback(4, [8] * 4, torch.Generator().manual_seed(0))
    feedback[-1] = model.out_head.weight.detach().clone()
    rows = feedback_angles(model, feedback, "dfa")
    assert rows[-1] == (0.0, "ok")
    for angle, status in rows[:-1]:
        assert angle is None
        assert status == ("not defined: DFA's B_l below the top stands in for the head's weight times the "
                          "Jacobians from h_l to h_L, which depend on the input")


def test_a_block_with_attention_has_no_weight_product():
    torch.manual_seed(0)
    vit = build_model("vit-mini", input_shape=[1, 8, 8], num_classes=4, d=16, depth=1, heads=2, patch=4)
    rows = feedback_angles(vit, [torch.zeros(16, 16), torch.zeros(4, 16)], "fa")
    assert rows[0][0] is None and "holds a MultiheadAttention, not only Linear layers" in rows[0][1]


def eval_batches(n: int = 8, b: int = 16):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(b, 6, generator=g), torch.randint(0, 4, (b,), generator=g)) for _ in range(n)]


def test_the_report_puts_the_angle_beside_gamma_for_fa_and_no_column_without_feedback():
    model = resmlp()
    feedback = init_fa_feedback(4, [8] * 4, torch.Generator().manual_seed(0))
    report = pytest_fa.diagnose(model, eval_batches(), credit=FACredit(feedback))
    expected = feedback_angles(model, feedback, "fa")
    assert [(r.wb_angle_deg, r.wb_status) for r in report.layers] == expected
    assert "∠(W,B_l)" in str(report).splitlines()[3]
    assert report.to_dict()["layers"][3]["wb_angle_deg"] == expected[3][0]
    plain = pytest_fa.diagnose(model, eval_batches())
    assert "∠(W,B_l)" not in str(plain) and all(r.wb_status == "" for r in plain.layers)
    dfa = pytest_fa.diagnose(model, eval_batches(), credit=DFACredit(init_dfa_feedback(4, [8] * 4, torch.Generator())),
                             null_draws=0)
    assert "∠(W,B_l) not defined at layers [0, 1, 2]: DFA's B_l below the top" in str(dfa)


def test_the_report_round_trips_the_new_fields():
    model, (x, y) = resmlp(), (torch.randn(64, 6), torch.randint(0, 4, (64,)))
    report = pytest_fa.diagnose(model, eval_batches(), ablation=block_ablation(model, x, y))
    again = type(report).from_dict(report.to_dict())
    assert again.to_dict() == report.to_dict()
    assert report.ablation["status"] == "ok" and report.layers[0].removed_status == ""
    assert all(r.removed_status == "ok" for r in report.layers[1:])


def test_weight_backward_pairs_are_found_by_their_names():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    net[0].weight_backward = net[0].weight.detach().clone()
    net[2].weight_backward = -net[2].weight.detach()
    assert weight_backward_angles(net) == [("0", 0.0), ("2", 180.0)]


def test_biotorch_fa_layers_angles_after_a_few_hundred_steps():
    """biotorch's FA mode on a small MLP, a few hundred steps: every layer's angle is a number
    in [0°, 180°] that matches its own computation; printed for examples/RESULTS.md."""
    biomodule = pytest.importorskip("biotorch.module.biomodule")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 5))
    with contextlib.redirect_stdout(io.StringIO()):
        model = biomodule.BioModule(net, mode="fa", output_dim=5)
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(20, 5, generator=g)
    before = dict(weight_backward_angles(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(300):
        x = torch.randn(64, 20, generator=g)
        loss = nn.functional.cross_entropy(model(x), (x @ teacher).argmax(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = dict(weight_backward_angles(model))
    print("biotorch fa angles before:", {k: round(v, 1) for k, v in before.items()})
    print("biotorch fa angles after 300 steps:", {k: round(v, 1) for k, v in after.items()})
    assert list(after) == ["module.0", "module.2", "module.4"]
    modules = dict(model.named_modules())
    for name, angle in after.items():
        layer = modules[name]
        w, b = layer.weight.detach().double().flatten(), layer.weight_backward.detach().double().flatten()
        assert 0.0 <= angle <= 180.0
        assert angle == pytest.approx(math.degrees(math.acos(float(w @ b / (w.norm() * b.norm())))), abs=1e-9)


def test_a_bundles_initial_weights_are_rebuilt_exactly_from_its_seed(small_data, tmp_path):
    """A frozen-blocks bundle keeps its blocks' weights at their initial values: the rebuilt
    initial weights equal them bit for bit, and the trained head differs."""
    from pytest_fa.core.settings import ProtocolSettings
    from pytest_fa.protocol import ProtocolRunner
    from pytest_fa.training.checkpoint import save_bundle
    from pytest_fa.training.trainer import train

    bundle = train(small_data, "frozen", arch_config={"d": 16, "depth": 2}, epochs=1, seed=7, monitor=False).bundle
    save_bundle(tmp_path / "frozen_s7.pt", bundle)
    runner = ProtocolRunner(ProtocolSettings(device="cpu"))
    init_state, why = runner.initial_state(runner.run(str(tmp_path / "frozen_s7.pt")))
    assert why == ""
    frozen = [k for k in bundle.state_dict if k.startswith("blocks.") and (".w1." in k or ".w2." in k)]
    assert len(frozen) == 8 and all(torch.equal(init_state[k], bundle.state_dict[k]) for k in frozen)
    assert not torch.equal(init_state["out_head.weight"], bundle.state_dict["out_head.weight"])


def test_the_figure_gets_a_third_panel_with_the_drops():
    pytest.importorskip("matplotlib")
    from pytest_fa.core.plot import report_figure

    model, (x, y) = Carrier(), carrier_data()
    batches = [(x[i::8], y[i::8]) for i in range(8)]
    report = pytest_fa.diagnose(model, batches, ablation=block_ablation(model, x, y))
    panel = report_figure(report).axes[2]
    assert panel.get_title() == "which block learned"
    assert sorted(bar.get_height() for bar in panel.patches) == [0.0, 50.0]  # removed; no reset without init
    assert len(report_figure(pytest_fa.diagnose(model, batches)).axes) == 2  # not measured: two panels


def test_the_which_block_example_tabulates_a_saved_report(tmp_path):
    import importlib.util
    import json
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "which_block", Path(__file__).resolve().parents[1] / "examples" / "which_block.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    model, (x, y) = Carrier(), carrier_data()
    batches = [(x[i::8], y[i::8]) for i in range(8)]
    report = pytest_fa.diagnose(model, batches, headline_acc=1.0, frozen_acc=0.5, label="carrier.pt",
                                ablation=block_ablation(model, x, y))
    (tmp_path / "r.json").write_text(json.dumps({"reports": [report.to_dict()]}))
    table = example.main([str(tmp_path / "r.json")]).splitlines()
    assert table[0].startswith("| checkpoint | state | Γ_l | drop removed (pp)")
    assert table[2] == "| carrier.pt | h_0 | unavailable | — | — | — | +50.0 |"
    assert table[3] == "| carrier.pt | h_1 | unavailable | +50.00 | not available | — | +50.0 |"


def test_check_measures_the_drops_on_all_samples_given_when_asked():
    model, (x, y) = Carrier(), carrier_data(128)
    initial = copy.deepcopy(model)
    with torch.no_grad():
        initial.blocks[0].weight.zero_()
    report = pytest_fa.check(model, (x, y), batch_size=16, ablation=True, init_state=initial.state_dict())
    assert report.ablation == {"status": "ok", "accuracy": 1.0, "samples": 128}
    assert [(r.removed_drop_pp, r.reset_drop_pp) for r in report.layers] == [(None, None), (50.0, 50.0), (0.0, 0.0)]
    assert pytest_fa.check(model, (x, y), batch_size=16).ablation == {}


def test_an_adapted_model_gives_the_drops_of_the_model_it_wraps_with_the_inner_initial_weights():
    model, initial = resmlp(), resmlp()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x, y = torch.randn(256, 6, generator=torch.Generator().manual_seed(5)), torch.randint(0, 4, (256,))
    plain = block_ablation(model, x, y, init_state=initial.state_dict())
    wrapped = block_ablation(pytest_fa.adapt(model, ["embed", "blocks.*"], norm="out_ln", head="out_head"), x, y,
                             init_state=initial.state_dict())
    assert wrapped == plain and all(b.reset_status == "ok" for b in plain.blocks)
