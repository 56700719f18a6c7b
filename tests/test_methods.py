"""The method zoo: each method trains, saves what its credit needs, and reloads to the same Γ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pytest_fa.core.credit import FACredit, init_fa_feedback
from pytest_fa.core.report import diagnose
from pytest_fa.errors import FeedbackError
from pytest_fa.models import build_model
from pytest_fa.training.checkpoint import load_bundle, load_checkpoint, save_bundle
from pytest_fa.training.data import eval_batches
from pytest_fa.training.methods import (
    METHODS,
    LocalCreditMethod,
    MethodState,
    get_method,
    register,
)
from pytest_fa.training.methods.equilibrium import equilibrium_credits
from pytest_fa.training.trainer import train
from pytest_fa.pitfalls.regimes import torch_threads

ARCH = {"d": 32, "depth": 3}
ZOO = ["bp", "dfa", "fa", "ep", "state_bridge", "credit_bridge"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def batches(small_data):
    return eval_batches(small_data, 8, 128)


@pytest.fixture(scope="module")
def zoo(small_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    out = {}
    for name in ZOO:
        result = train(small_data, name, arch_config=ARCH, epochs=1, seed=5, monitor=False)
        out[name] = (result, save_bundle(folder / f"{name}.pt", result.bundle))
    return out


@pytest.mark.parametrize("name", ZOO)
def test_gamma_from_the_reloaded_bundle_equals_gamma_in_training(name, zoo, batches):
    result, path = zoo[name]
    method = get_method(name, **result.bundle.method_config)
    credit, _ = method.credit(result.model, result.state)
    in_training = diagnose(result.model, batches, credit=credit)
    loaded = load_checkpoint(path)
    reloaded_method = get_method(loaded.method, **loaded.state.config)
    reloaded_credit, _ = reloaded_method.credit(loaded.model, loaded.state)
    reloaded = diagnose(loaded.model, batches, credit=reloaded_credit)
    assert in_training.gamma_per_layer == reloaded.gamma_per_layer
    assert all(g is not None for g in reloaded.gamma_per_layer)


def test_bundles_carry_the_auxiliary_state_their_credit_needs(zoo):
    assert len(load_bundle(zoo["fa"][1]).feedback) == ARCH["depth"] + 1
    assert set(load_bundle(zoo["state_bridge"][1]).aux) == {"state_bridge"}
    assert set(load_bundle(zoo["credit_bridge"][1]).aux) == {"credit_bridge"}
    assert load_bundle(zoo["ep"][1]).method_config == {
        "penalty": 0.0, "beta": 0.1, "steps": 6, "step_size": 0.5, "credit": "displacement", "backtrack": True,
    }


def test_an_ep_bundle_from_before_backtracking_reloads_with_its_fixed_step_relaxation(zoo, tmp_path):
    bundle = load_bundle(zoo["ep"][1])
    del bundle.method_config["backtrack"]
    loaded = load_checkpoint(save_bundle(tmp_path / "old_ep.pt", bundle))
    assert loaded.state.config["backtrack"] is False


@pytest.mark.parametrize("name", ["state_bridge", "credit_bridge"])
def test_a_bridge_bundle_without_its_nets_is_refused(name, zoo, tmp_path):
    bundle = load_bundle(zoo[name][1])
    bundle.aux = {}
    stripped = save_bundle(tmp_path / "stripped.pt", bundle)
    with pytest.raises(FeedbackError, match="cos\\(BP, BP\\) = 1"):
        load_checkpoint(stripped)


def test_fa_credit_travels_down_through_the_feedback_chain(small_data):
    dims = [32, 32, 32]
    feedback = init_fa_feedback(10, dims, torch.Generator().manual_seed(0))
    assert [tuple(b.shape) for b in feedback] == [(32, 32), (32, 32), (10, 32)]
    logits = torch.randn(4, 10)
    y = torch.tensor([0, 1, 2, 3])
    credits = FACredit(feedback)(None, y, logits, None)
    e = torch.softmax(logits, -1) - F.one_hot(y, 10)
    torch.testing.assert_close(credits[2], e @ feedback[2])
    torch.testing.assert_close(credits[0], e @ feedback[2] @ feedback[1] @ feedback[0])


def test_ep_credit_tends_to_the_bp_gradient_when_relaxed(small_data):
    torch.manual_seed(0)
    model = build_model("resmlp", input_shape=[40], num_classes=10, **ARCH).double().eval()
    x, y = small_data.x_test[:64].double(), small_data.y_test[:64]
    logits, hiddens = model(x, return_hidden=True)
    g = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), hiddens)
    relaxed = equilibrium_credits(model, hiddens, y, beta=1e-4, steps=200, step_size=0.3)
    truncated = equilibrium_credits(model, hiddens, y, beta=1e-4, steps=2, step_size=0.3)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1, eps=0.0).mean().item()  # noqa: E731
    assert all(cos(a, gl) > 0.99 for a, gl in zip(relaxed, g))
    # each relaxation step carries the nudge one state down: two steps leave h_0 and h_1 untouched
    reached = truncated[3].abs().max()
    assert reached > 0.1
    assert truncated[0].abs().max() < 1e-9 * reached and truncated[1].abs().max() < 1e-9 * reached


def test_bp_penalty_shrinks_the_branches(small_data, fa_realisation):
    seed, threads = fa_realisation
    with torch_threads(threads):
        plain = train(small_data, "bp", arch_config=ARCH, epochs=1, seed=seed)
        penalised = train(small_data, get_method("bp", penalty=1.0), arch_config=ARCH, epochs=1, seed=seed)
    assert penalised.bundle.method_config == {"penalty": 1.0}
    assert plain.bundle.method_config == {}
    assert penalised.history[-1]["max_growth"] < plain.history[-1]["max_growth"]


def test_a_users_own_method_plugs_in_through_register(small_data, batches, tmp_path):
    @register
    class SignFlip(LocalCreditMethod):
        """Anti-aligned credit: a deliberately bad rule, to see Γ go negative."""

        name = "sign_flip_test"

        def training_credits(self, model, state, x, y, logits, outputs):
            return self._credit(model, x, y)

        def _credit(self, model, x, y):
            logits, hiddens = model(x, return_hidden=True)
            return [-g for g in torch.autograd.grad(F.cross_entropy(logits, y), hiddens)]

        def credit(self, model, state):
            return (lambda x, y, logits, hiddens: [
                -g for g in torch.autograd.grad(F.cross_entropy(logits, y), hiddens, retain_graph=True)
            ]), ""

    try:
        result = train(small_data, "sign_flip_test", arch_config=ARCH, epochs=1, seed=0, monitor=False)
        path = save_bundle(tmp_path / "flip.pt", result.bundle)
        loaded = load_checkpoint(path)
        credit, _ = get_method(loaded.method).credit(loaded.model, MethodState())
        report = diagnose(loaded.model, batches, credit=credit)
        assert all(g == pytest.approx(-1.0) for g in report.gamma_per_layer)
    finally:
        METHODS.pop("sign_flip_test")


def test_perturbation_correlation_has_its_controls(dfa_trained, batches):
    from pytest_fa.core.perturbation import perturbation_correlation

    result, _ = dfa_trained
    credit, _ = get_method("dfa").credit(result.model, result.state)
    rho = perturbation_correlation(result.model, batches[:2], credit, directions=32)
    assert all(c > 0.99 for c in rho.gradient_control)  # the Taylor ceiling
    assert all(abs(c) < 0.1 for c in rho.random_control)
    assert all(-1 <= r <= 1 for r in rho.rho)
    assert next(result.model.parameters()).dtype == torch.float32  # put back as it was


def test_dfa_on_token_states_gives_each_token_the_samples_credit():
    """vit-mini's DFA update: ⟨f_l(h_l), a_l⟩ with the sample's ``a_l = e B_l`` at every token,
    under the default all-tokens reading as under the cls reading."""
    from pytest_fa.training.methods import get_method
    from pytest_fa.training.methods.base import credit_loss, local_forward

    torch.manual_seed(0)
    vit = build_model("vit-mini", input_shape=[40], num_classes=10, d=16, depth=2, heads=2)
    dfa = get_method("dfa")
    state = dfa.setup(vit, 10, [40], torch.Generator().manual_seed(1))
    x, y = torch.randn(8, 40), torch.arange(8) % 10
    logits, outputs = local_forward(vit, x)
    credits = dfa.training_credits(vit, state, x, y, logits, outputs)
    assert all(a.shape == (8, 16) for a in credits)
    by_hand = sum((out * a[:, None, :]).sum() / 8 for out, a in zip(outputs, credits))
    for layout in ("tokens_all", "tokens"):
        torch.testing.assert_close(credit_loss(outputs, credits, layout), by_hand)
