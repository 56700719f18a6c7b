"""pytest_fa.diagnose() on 8x128 samples ÷ one plain forward+backward over the same samples.

    python benchmarks/bench_diagnose.py --bundle /tmp/bench_runs/dfa_s42.pt --threads 1 --repeats 21 --profile

Contenders, interleaved round by round (order rotated each round):
  fwd_bwd    model(x) -> CE -> loss.backward() on each of the 8 eval batches of 128
  null20     diagnose(..., credit=DFACredit(bundle.feedback))   (null_draws=20, the default)
  null0      the same with null_draws=0
  probe      pytest_fa.core.probe.run_probe alone (the forward/backward pass diagnose runs)
  nullband   pytest_fa.core.calibration.null_gamma alone (what null_draws=20 adds)
  nullvec    a benchmark-only prototype of the same null band: the 20 fresh B drawn once (not
             per batch), g_l normalised once per layer (not per draw), the 20 draws in one
             batched matmul; its Γ_l means are checked against null_gamma's
  nullgram   a second prototype that never materialises the (20, B, F) credits:
             ⟨e_i B, g_i⟩ = e_i · (B ĝ_i) and ‖e_i B‖² = e_i (B Bᵀ) e_iᵀ, in float64
  null0+gram diagnose(null_draws=0) followed by nullgram: what diagnose with the null band
             would cost if the package computed the band that way
Ratios are per round against fwd_bwd of that round; medians, IQR and range are reported.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats

import torch
import torch.nn.functional as F
from _common import fmt_ms, fmt_ratio, interleaved, provenance, ratio_stats


def load(bundle_path: str):
    from pytest_fa.training.checkpoint import load_checkpoint
    from pytest_fa.training.data import dataset_from_spec, eval_batches

    loaded = load_checkpoint(bundle_path)
    data = dataset_from_spec(loaded.bundle.data)
    batches = eval_batches(data, 8, 128, seed=0)
    return loaded, batches


def null_vectorised(model, batches, num_classes: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    """(n, L+1) null Γ_l, as pytest_fa.core.calibration.null_gamma computes it, with the redundant
    work hoisted: one feedback draw set for all batches, one normalisation of g per layer."""
    from pytest_fa.core.credit import init_dfa_feedback, output_error
    from pytest_fa.core.diagnostics import unit_rows
    from pytest_fa.core.reference import reference_pass

    stacks = None
    per_batch = []
    for x, y in batches:
        ref = reference_pass(model, x, y)
        logits, rows = ref.logits, ref.rows
        if stacks is None:
            dims = [r.shape[1] for r in rows]
            draws = [init_dfa_feedback(num_classes, dims, torch.Generator().manual_seed(seed * 100_003 + i)) for i in range(n)]
            stacks = [torch.stack([d[l] for d in draws]) for l in range(len(dims))]  # (n, C, F_l)
        e = output_error(logits, y)
        cos = []
        for g, b in zip(rows, stacks):
            a = torch.matmul(e, b)  # (n, B, F): all draws at once, float32 as in null_gamma
            unit_a = unit_rows(a.reshape(-1, a.shape[-1])).reshape(a.shape)
            cos.append((unit_a * unit_rows(g)).sum(-1))  # (n, B)
        per_batch.append(torch.stack(cos, dim=1))  # (n, L+1, B)
    return torch.cat(per_batch, dim=2).nanmean(dim=2)


def null_gram(model, batches, num_classes: int, n: int = 20, seed: int = 0) -> torch.Tensor:
    """(n, L+1) null Γ_l from C-dimensional products only (float64, exact up to rounding)."""
    from pytest_fa.core.credit import init_dfa_feedback, output_error
    from pytest_fa.core.diagnostics import unit_rows
    from pytest_fa.core.reference import reference_pass

    stacks = grams = None
    per_batch = []
    for x, y in batches:
        ref = reference_pass(model, x, y)
        logits, rows = ref.logits, ref.rows
        if stacks is None:
            dims = [r.shape[1] for r in rows]
            draws = [init_dfa_feedback(num_classes, dims, torch.Generator().manual_seed(seed * 100_003 + i)) for i in range(n)]
            stacks = [torch.stack([d[l] for d in draws]).double() for l in range(len(dims))]  # (n, C, F_l)
            grams = [b @ b.transpose(1, 2) for b in stacks]  # (n, C, C)
        e = output_error(logits, y).double()  # (B, C)
        cos = []
        for g, b, gram in zip(rows, stacks, grams):
            proj = torch.matmul(unit_rows(g), b.transpose(1, 2))  # (n, B, C) = B ĝ_i per draw
            dot = (proj * e).sum(-1)
            norm = torch.einsum("bc,ncd,bd->nb", e, gram, e).sqrt()
            cos.append(dot / norm)
        per_batch.append(torch.stack(cos, dim=1))
    return torch.cat(per_batch, dim=2).nanmean(dim=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="/tmp/bench_runs/dfa_s42.pt", help="a DFA bundle (fa-train)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--repeats", type=int, default=21, help="timed rounds (default 21)")
    parser.add_argument("--profile", action="store_true", help="also print a cProfile breakdown of diagnose()")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    from pytest_fa.core.calibration import null_gamma
    from pytest_fa.core.credit import DFACredit
    from pytest_fa.core.probe import run_probe
    from pytest_fa.core.report import diagnose

    loaded, batches = load(args.bundle)
    model = loaded.model.eval()
    credit = DFACredit(loaded.bundle.feedback)
    acc = loaded.bundle.headline_acc
    num_classes = credit.feedback[-1].shape[0]

    def fwd_bwd():
        for x, y in batches:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()

    contenders = {
        "fwd_bwd": fwd_bwd,
        "null20": lambda: diagnose(model, batches, headline_acc=acc, frozen_acc=0.5, credit=credit, null_draws=20),
        "null0": lambda: diagnose(model, batches, headline_acc=acc, frozen_acc=0.5, credit=credit, null_draws=0),
        "probe": lambda: run_probe(model, batches, credit=credit),
        "nullband": lambda: null_gamma(model, batches, num_classes, n=20),
        "nullvec": lambda: null_vectorised(model, batches, num_classes, n=20),
        "nullgram": lambda: null_gram(model, batches, num_classes, n=20),
        "null0+gram": lambda: (
            diagnose(model, batches, headline_acc=acc, frozen_acc=0.5, credit=credit, null_draws=0),
            null_gram(model, batches, num_classes, n=20),
        ),
    }
    with torch.enable_grad():
        reference = null_gamma(model, batches, num_classes, n=20).draws
        prototype = null_vectorised(model, batches, num_classes, n=20)
        gram = null_gram(model, batches, num_classes, n=20)
    max_diff = float((reference - prototype).abs().max())
    gram_diff = float((reference - gram).abs().max())
    times = interleaved(contenders, args.repeats, warmup=2)
    model.zero_grad(set_to_none=True)

    print(provenance())
    print(f"bundle {args.bundle}  ({loaded.bundle.method}, {loaded.bundle.arch} {loaded.bundle.arch_config.get('d')}x"
          f"{loaded.bundle.arch_config.get('depth')}, {loaded.bundle.epochs} epochs)")
    print(f"torch {torch.__version__}  threads {torch.get_num_threads()}  samples 8x128  rounds {args.repeats} (+2 warm-up)")
    print(f"{'contender':<11} {'median time (raw, not a result)':>32}   ratio to fwd_bwd")
    for name in contenders:
        ratio = "1 (baseline)" if name == "fwd_bwd" else fmt_ratio(ratio_stats(times[name], times["fwd_bwd"]))
        print(f"{name:<11} {fmt_ms(times[name]):>32}   {ratio}")
    share = ratio_stats([a - b for a, b in zip(times["null20"], times["null0"])], times["null20"])
    print(f"nullvec vs null_gamma: max |ΔΓ_l| over 20 draws x {reference.shape[1]} layers = {max_diff:.2e}; "
          f"nullvec ÷ nullband = {fmt_ratio(ratio_stats(times['nullvec'], times['nullband']))}")
    print(f"nullgram vs null_gamma: max |ΔΓ_l| = {gram_diff:.2e}; "
          f"nullgram ÷ nullband = {fmt_ratio(ratio_stats(times['nullgram'], times['nullband']))}")
    print(f"null band share of diagnose(null_draws=20): {100 * share['median']:.0f}% "
          f"(range {100 * share['min']:.0f}-{100 * share['max']:.0f}%)")

    if args.profile:
        for draws in (20, 0):
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(5):
                diagnose(model, batches, headline_acc=acc, frozen_acc=0.5, credit=credit, null_draws=draws)
            profiler.disable()
            out = io.StringIO()
            stats = pstats.Stats(profiler, stream=out)
            stats.sort_stats("tottime").print_stats(18)
            print(f"\n--- cProfile, 5 x diagnose(null_draws={draws}), sorted by own time ---")
            print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:6000])


if __name__ == "__main__":
    main()
