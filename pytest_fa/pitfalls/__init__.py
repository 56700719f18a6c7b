"""The evaluation pitfalls of the reference study: the registry, and one test module
``pitfall_<slug>.py`` per pitfall that ``pytest --fa-pitfalls`` runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pitfall:
    """One pitfall: what a reader sees, why it happens, how pytest-fa catches it, the fix, and
    the code ``pytest_fa.lint`` reports it under (None: not visible in the source)."""

    id: str
    slug: str
    title: str
    symptom: str
    cause: str
    guard: str
    fix: str
    lint_code: str | None = None

    @property
    def module(self) -> str:
        return f"pitfall_{self.slug.replace('-', '_')}.py"

    @property
    def path(self) -> Path:
        return HERE / self.module


PITFALLS: tuple[Pitfall, ...] = (
    Pitfall(
        "1", "norm-minus-one", "`tensor.norm(-1)` is not the L2 norm along the last dim",
        symptom="Residual-stream norms that barely move, or move the wrong way, while the network explodes.",
        cause="`x.norm(-1)` passes p = -1 positionally: it is the p = -1 'norm' of the whole tensor "
        "(a harmonic-type mean dominated by the smallest entries), not the per-sample L2 norm.",
        guard="`diagnostics.per_sample_norms` takes `torch.linalg.vector_norm(ord=2, dim=1)` of "
        "per-sample rows, scaled by the largest entry so no value under- or overflows; "
        "`--fa-lint` flags positional `p` in `.norm(...)` calls.",
        fix="Write `x.norm(dim=-1)` or `torch.linalg.vector_norm(x, dim=-1)`.",
        lint_code="FA001",
    ),
    Pitfall(
        "2", "cosine-eps-clamp", "`F.cosine_similarity` clamps the norms at eps = 1e-8",
        symptom="Deep-layer Γ close to 0 that is read as 'no alignment', on a network whose BP "
        "reference norm is ~1e-9.",
        cause="`F.cosine_similarity` divides by `max(‖x‖, eps)`: once ‖g‖ < 1e-8 the 'cosine' "
        "shrinks by ‖g‖/eps and no longer measures direction.",
        guard="`diagnostics.cosine_per_sample` normalises each row without any eps, in float64, "
        "and Γ_l is reported undefined where ‖g_l‖ is below the floor; `--fa-lint` flags "
        "`cosine_similarity` on gradients without an explicit `eps=`.",
        fix="Compute the cosine from unit vectors in float64 and report undefined below the floor.",
        lint_code="FA002",
    ),
    Pitfall(
        "3", "fp16-underflow", "fp16 underflows hidden-layer BP gradients",
        symptom="‖g_L‖ reported as exactly 0, or Γ undefined/NaN everywhere, only in mixed-precision runs.",
        cause="Per-element hidden gradients of a Mode-1 network are ~1e-9; float16's smallest "
        "subnormal is 6e-8, so they flush to zero. bfloat16 shares float32's exponent range and keeps them.",
        guard="The probe never measures below float32: a model stored in float16/bfloat16 is "
        "diagnosed through a float32 copy, and the dtype is recorded beside every number; "
        "`--fa-lint` flags `.half()` on gradients.",
        fix="Measure reference gradients in float32 or float64 (or bf16 autocast), never fp16.",
        lint_code="FA003",
    ),
    Pitfall(
        "4", "training-specific-feedback", "Random feedback matrices are training-specific",
        symptom="Γ of a DFA checkpoint changes when the analysis script is re-run with another seed.",
        cause="The network adapts to the particular B_l it was trained with; a re-drawn B gives a "
        "different (near-null) credit, so Γ is not invariant to reseeding.",
        guard="Bundles store the training B_l; `load_checkpoint` validates their count and shapes, "
        "and Γ from a reloaded bundle equals Γ in the training process.",
        fix="Save the feedback matrices with every checkpoint; never regenerate them from a seed.",
    ),
    Pitfall(
        "5", "aggregation-order", "The aggregation order over layers, samples and batches moves Γ",
        symptom="Two papers report Γ for the same method that differ by 2-3x, or in sign.",
        cause="Mean of per-sample cosines, cosine of batch-mean vectors and cosine of the "
        "flattened batch are different statistics; averaging layers before or after changes it again.",
        guard="Γ_l is always the mean over samples of per-sample cosines, per layer, independent of "
        "how the samples are split into batches; aggregates over layers are reported separately.",
        fix="Report per-sample-then-mean Γ per layer, and state the order for any aggregate.",
    ),
    Pitfall(
        "6", "layer-aggregation", "Per-layer structure is hidden by aggregation",
        symptom="A mildly positive headline Γ while the deep blocks are unaligned.",
        cause="A global cosine or a layer mean is carried by the layers whose alignment is "
        "largest (layer 0 on the ResMLP under DFA).",
        guard="Every report lists Γ_l per layer next to ‖h_l‖ and ‖g_l‖, and the deep-layer mean "
        "separately from the all-layer mean.",
        fix="Always report per-layer Γ.",
    ),
    Pitfall(
        "6.5", "missing-feedback", "Missing feedback matrices make Γ fall back to cos(BP, BP) = 1",
        symptom="Perfect alignment (Γ = 1.000) reported for a local-credit method.",
        cause="A post-hoc script that cannot find the B_l or auxiliary nets substitutes the BP "
        "gradient for the credit and compares BP with itself.",
        guard="A bundle whose method needs feedback matrices but lacks them is a FeedbackError; "
        "without a credit signal Γ is reported unavailable with the reason, never computed.",
        fix="Save B_l and auxiliary nets in the checkpoint bundle and fail loudly when they are missing.",
    ),
    Pitfall(
        "B3", "batch-mismatch", "Reference and credit computed on different batches",
        symptom="Γ that is unstable across re-runs, or inflated, for the same checkpoint.",
        cause="Credit from one minibatch compared with a BP gradient from another (or with "
        "different dropout masks/augmentations) measures batch similarity, not credit quality.",
        guard="The credit signal is evaluated on the very forward pass that produced the reference "
        "gradient; `--fa-lint` flags cosines between quantities from different batches.",
        fix="Compute both vectors on the same frozen forward pass.",
        lint_code="FA004",
    ),
    Pitfall(
        "B4", "baseline-mismatch", "The frozen-blocks baseline does not match the trained model",
        symptom="A method 'beats the random-blocks baseline' only because the baseline got less.",
        cause="A baseline with another width, depth, data set, seed, recipe or epoch budget "
        "answers a different question than 'did the trained blocks help?'.",
        guard="The frozen baseline is trained from the checkpoint's own recorded architecture, "
        "data, seed, recipe and epochs, and cached under a key of all of them.",
        fix="Train the frozen-blocks control with exactly the recipe and budget of the method.",
    ),
    Pitfall(
        "B5", "train-eval-mode", "Train/eval mode inconsistencies change the measurement",
        symptom="Diagnostics that change when the same script is run after training vs after loading.",
        cause="BatchNorm and dropout behave differently in train mode: batch statistics and "
        "masks change ‖h‖, g and the credit.",
        guard="The probe always measures in eval mode, records it, and restores the model's mode.",
        fix="Fix the mode explicitly before measuring and log it.",
    ),
    Pitfall(
        "B6", "post-hoc-normalisation", "Post-hoc normalisation erases the scale pathology",
        symptom="Hidden-state norms that look healthy in the logs of an exploding network.",
        cause="Hidden states normalised (LayerNorm, unit norm) before logging have norm ~√d "
        "whatever the raw stream does.",
        guard="The protocol reads the raw h_l the model returns, never a normalised copy.",
        fix="Keep raw norms for diagnosis; normalise only for plots.",
    ),
    Pitfall(
        "B7", "null-controls", "Intervention claims without a null control",
        symptom="'The intervention creates alignment' with no fresh-B comparison.",
        cause="Some Γ is expected from structure alone; without a null distribution (fresh random "
        "B) a small positive Γ is uninterpretable.",
        guard="`pytest_fa.core.calibration.null_gamma` computes Γ with n fresh B; the suite checks "
        "that the training-B Γ is compared against that null.",
        fix="Report Γ with the training B next to the fresh-B null (mean ± std over n draws).",
    ),
)


@dataclass(frozen=True)
class Witness:
    """Where removing a guard must show: the bundle (``mode1``, ``meaningful``, ``stripped``,
    ``batchnorm``; see ``tools/guards.py``), the paths (``python``: ``diagnose()``; ``cli``: the
    JSON report), the model's ``dtype``/``train_mode``, ``--fa-frozen-acc`` (None: trained) and
    threshold overrides; ``why_not`` says why a path is left out or the witness is not the default."""

    bundle: str = "mode1"
    paths: tuple[str, ...] = ("python", "cli")
    dtype: str | None = None
    train_mode: bool = False
    frozen_acc: float | None = 0.5
    thresholds: tuple[tuple[str, float], ...] = ()
    why_not: str = ""


@dataclass(frozen=True)
class Guard:
    """The function (or class) ``target`` that guards against a pitfall; ``tools/guards.py`` swaps
    ``naive`` in wherever pytest-fa binds it, and the pitfall's tests and ``witness`` must change."""

    target: str
    naive: Callable[..., Any]
    description: str
    witness: Witness = Witness()


def by_id(pitfall_id: str) -> Pitfall:
    for pitfall in PITFALLS:
        if pitfall.id == pitfall_id:
            return pitfall
    raise KeyError(f"unknown pitfall {pitfall_id!r}; known: {[p.id for p in PITFALLS]}")
