"""Penalty sweep: DFA with λ Σ‖f_l‖² for λ ∈ {0, 1e-4, 1e-3, 1e-2, 1e-1}, and BP with and
without the largest λ as the capacity-cost control (seed 42).

    python examples/penalty_sweep.py [--data fashion-mnist] [--lambdas 0 1e-2]
"""

from __future__ import annotations

import sys

import studies

LAMBDAS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = studies.study_parser(__doc__.splitlines()[0])
    parser.add_argument("--lambdas", type=float, nargs="+", default=LAMBDAS)
    args = parser.parse_args(argv)
    study = studies.setup(args)
    rows = studies.penalty_sweep(study.data, study.out, args.lambdas, seed=study.seeds[0], epochs=study.epochs,
                                 arch_config=study.arch_config, device=study.device, batch_size=study.batch_size,
                                 log=study.log)
    payload = [{**{k: v for k, v in r.items() if k != "result"}, "report": r["result"].report} for r in rows]
    study.write("penalty_sweep", "Penalty sweep", studies.penalty_table(rows),
                "python examples/penalty_sweep.py " + " ".join(argv), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
