"""Pitfall 6.5: feedback matrices (or auxiliary nets) missing from a checkpoint make a
post-hoc Γ script fall back to cos(BP, BP) = 1."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_fa.core import probe, report
from pytest_fa.core.reference import reference_pass
from pytest_fa.errors import CheckpointError, FeedbackError
from pytest_fa.models import build_model
from pytest_fa.pitfalls import Guard, Witness
from pytest_fa.pitfalls.fixtures import exposed, loaded_or_skip
from pytest_fa.pitfalls.regimes import MEANINGFUL_EPOCH
from pytest_fa.training import checkpoint
from pytest_fa.training.checkpoint import Bundle, LoadedCheckpoint, save_bundle
from pytest_fa.training.methods import MethodState, get_method

pytestmark = pytest.mark.fa_pitfall("6.5")


def _naive_load_checkpoint(path, factory=None, input_shape=None, num_classes=None, allow_unknown_method=False,
                           adapt=None, contents=None):
    """The post-hoc loader: weights in, whatever feedback happens to be there (maybe none)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    bundle = Bundle.from_payload(payload, str(path))
    model = build_model(bundle.arch, **bundle.arch_config)
    model.load_state_dict(bundle.state_dict)
    state = MethodState(feedback=list(bundle.feedback), config=bundle.method_config, aux_state=bundle.aux)
    return LoadedCheckpoint(str(path), model, bundle, state, bundle.method)


GUARD = Guard("pytest_fa.training.checkpoint.load_checkpoint", _naive_load_checkpoint,
              "a bundle loads with its feedback matrices silently missing", Witness(bundle="stripped"))


def naive_posthoc_gamma(path, batches) -> list[float]:
    """Γ_l as a post-hoc script computes it: DFA credit when the B_l were saved, otherwise
    "just use the gradient" — the fallback that compares BP with itself."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = build_model(ckpt["arch"], **ckpt["arch_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    feedback = ckpt.get("feedback") or []
    per_batch = []
    for x, y in batches:
        x, y = x.cpu(), y.cpu()
        ref = reference_pass(model, x, y)
        logits, grads = ref.logits, ref.grads
        if feedback:
            e = torch.softmax(logits.detach(), -1) - F.one_hot(y, logits.shape[-1])
            credits = [e @ b for b in feedback]
        else:
            credits = grads  # no B_l in the file: fall back to the gradient
        per_batch.append([F.cosine_similarity(a.double(), g.double(), dim=-1) for a, g in zip(credits, grads)])  # noqa: FA002
    return [float(torch.cat(layer).mean()) for layer in zip(*per_batch)]


def _intact_and_stripped(regime, folder: Path) -> tuple[Path, Path]:
    """The meaningful run's bundle at ``MEANINGFUL_EPOCH``, saved with and without its B_l."""
    regime.meaningful_model_at(MEANINGFUL_EPOCH)  # asserts the epoch is still meaningful
    run = regime.meaningful
    bundle = copy.deepcopy(run.bundle)
    bundle.state_dict = {k: v.detach().cpu().clone() for k, v in run.snapshots[MEANINGFUL_EPOCH].items()}
    intact = save_bundle(folder / "dfa_intact.pt", bundle)
    bundle.feedback = []
    stripped = save_bundle(folder / "dfa_stripped.pt", bundle)
    return intact, stripped


def test_a_posthoc_script_reports_perfect_alignment_for_a_bundle_without_feedback(degenerate_dfa, tmp_path):
    """Pitfall 6.5: with its B_l stripped, a real DFA bundle reads as Γ = 1.000 on every layer."""
    intact, stripped = _intact_and_stripped(degenerate_dfa, tmp_path)
    honest = naive_posthoc_gamma(intact, degenerate_dfa.batches)
    fallback = naive_posthoc_gamma(stripped, degenerate_dfa.batches)
    # measured: honest Γ_l = -0.008, -0.050, -0.081, -0.086, -0.095 (CPU, seed 42)
    assert all(abs(v) < 0.3 for v in honest), honest
    assert all(v > 1 - 1e-9 for v in fallback), f"the fallback should read as perfect alignment: {fallback}"
    assert min(f - h for f, h in zip(fallback, honest)) > 0.7


def test_pytest_fa_refuses_a_bundle_without_its_feedback(degenerate_dfa, tmp_path):
    """Pitfall 6.5: pytest-fa refuses the stripped bundle, rebuilds the training credit from the
    intact one, and never computes Γ without a credit signal."""
    intact, stripped = _intact_and_stripped(degenerate_dfa, tmp_path)
    with pytest.raises(FeedbackError, match=r"cos\(BP, BP\) = 1"):
        checkpoint.load_checkpoint(stripped)

    loaded = checkpoint.load_checkpoint(intact)
    assert len(loaded.state.feedback) == len(degenerate_dfa.feedback)
    assert all(torch.equal(a.cpu(), b.cpu()) for a, b in zip(loaded.state.feedback, degenerate_dfa.feedback))
    batches = [(x.cpu(), y.cpu()) for x, y in degenerate_dfa.batches]
    credit, _ = get_method(loaded.method, **loaded.bundle.method_config).credit(loaded.model, loaded.state)
    measured = report.diagnose(loaded.model, batches, credit=credit)
    gammas = measured.gamma_per_layer
    assert all(g is not None and abs(g) < 0.3 for g in gammas), gammas
    # the same numbers the post-hoc script gets when the B_l are there
    for ours, theirs in zip(gammas, naive_posthoc_gamma(intact, batches)):
        assert ours == pytest.approx(theirs, abs=1e-6)

    blind = report.diagnose(loaded.model, batches, credit=None, credit_unavailable="the bundle carries no B_l")
    assert blind.credit_status == "unavailable: the bundle carries no B_l"
    assert all(row.gamma is None for row in blind.layers)


@given(kept=st.sets(st.integers(0, 4), max_size=5), transposed=st.none() | st.integers(0, 4))
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_incomplete_or_mangled_feedback_is_refused(degenerate_dfa, kept, transposed):
    """Pitfall 6.5: any subset of the B_l, or a transposed one, is a FeedbackError."""
    bundle = copy.deepcopy(degenerate_dfa.bundle)
    assert len(bundle.feedback) == 5, "the regime is a ResMLP with L = 4: five B_l"
    feedback = [bundle.feedback[i] for i in sorted(kept)]
    if transposed is not None and transposed < len(feedback):
        feedback[transposed] = feedback[transposed].T.contiguous()
    else:
        transposed = None
    bundle.feedback = feedback
    with tempfile.TemporaryDirectory() as folder:
        path = save_bundle(Path(folder) / "b.pt", bundle)
        if len(kept) == 5 and transposed is None:
            loaded = checkpoint.load_checkpoint(path)
            assert all(torch.equal(a, b) for a, b in zip(loaded.state.feedback, degenerate_dfa.bundle.feedback))
        else:
            with pytest.raises(FeedbackError):
                checkpoint.load_checkpoint(path)


def test_user_checkpoint_carries_what_its_credit_needs(fa_checkpoint_path, fa_settings, fa_runner):
    """Pitfall 6.5: your checkpoint carries the B_l / auxiliary nets its credit needs, and that
    credit is not the BP gradient in disguise."""
    path = fa_checkpoint_path
    try:
        payload = checkpoint.read_checkpoint(path)
    except CheckpointError as exc:
        pytest.skip(f"cannot read {path} (the protocol items report why): {exc}")
    if not checkpoint.is_bundle(payload):
        pytest.skip("a plain state dict records no method and no feedback: pytest-fa reports Γ as "
                    "unavailable for it rather than falling back; save a bundle to have its B_l checked")
    missing = unloadable = None
    try:
        loaded = checkpoint.load_checkpoint(path, factory=fa_settings.model_factory)
    except FeedbackError as exc:
        missing = str(exc)
    except CheckpointError as exc:
        unloadable = str(exc)
    if missing:
        exposed("6.5", missing)
    if unloadable:
        pytest.skip(f"cannot load {path} (the protocol items report why): {unloadable}")
    if loaded.method == "bp":
        return
    credit, _ = get_method(loaded.method, **loaded.bundle.method_config).credit(loaded.model, loaded.state)
    if credit is None:
        return
    run, batches = loaded_or_skip(fa_runner, path)
    measured = probe.run_probe(copy.deepcopy(run.pristine), batches, credit=credit)
    gammas = [float(c[~torch.isnan(c)].mean()) for c in measured.cosines if c is not None and (~torch.isnan(c)).any()]
    if gammas and all(g > 1 - 1e-9 for g in gammas):
        exposed("6.5", f"{Path(path).name}: method {loaded.method!r} gives Γ = 1.000 on every layer: its "
                "credit signal is the BP gradient, not the method's own credit")
