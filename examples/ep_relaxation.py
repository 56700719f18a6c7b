"""EP's nudged-phase relaxation: fixed step vs backtracking, state-shift vs prediction-error credit.

    python examples/ep_relaxation.py --epochs 3 --seed 42

Trains EP on MNIST-1D (ResMLP d = 256, L = 4, the paper's recipe) with each combination of
``credit`` ("displacement": the state shift, the reference implementation's rule;
"prediction-error": ``−r_l/β``) and ``backtrack`` (per-sample step halving, the default, or
the fixed step of size 0.5), and prints per epoch the test accuracy, ``‖h_L‖``, the largest
block growth and the median ``‖g_L‖`` — the trainer's own monitor.
"""

from __future__ import annotations

import argparse
import itertools
import sys

from pytest_fa.training.data import load_dataset
from pytest_fa.training.methods import get_method
from pytest_fa.training.methods.equilibrium import CREDIT_RULES
from pytest_fa.training.trainer import train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--smoke", action="store_true", help="seconds-long check: 6 000 samples, d = 32, 1 epoch")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    data = load_dataset("mnist1d", **({"num_samples": 6000} if args.smoke else {}))
    arch_config = {"d": 32, "depth": 4} if args.smoke else None
    epochs = 1 if args.smoke else args.epochs
    print("| credit | relaxation | epoch | test acc | ‖h_L‖ | max growth | ‖g_L‖ | gain_L |")
    print("|---|---|---|---|---|---|---|---|")
    for credit, backtrack in itertools.product(reversed(CREDIT_RULES), (False, True)):
        method = get_method("ep", credit=credit, backtrack=backtrack)
        result = train(data, method, arch_config=arch_config, epochs=epochs, seed=args.seed, device=args.device)
        for r in result.history:
            print(
                f"| {credit} | {'backtracking' if backtrack else 'fixed step'} | {r['epoch']} | "
                f"{r['test_acc']:.4f} | {r['h_L']:.3g} | {r['max_growth']:.3g}× | {r['g_L']:.3g} | "
                f"{r['gain_L']:.3g} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
