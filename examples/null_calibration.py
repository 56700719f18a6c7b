"""Null calibration: Γ per layer with the training feedback vs n = 20 fresh random draws, for
DFA with the scale penalty λ = 1e-2 and without it (seed 42; reuses the penalty sweep's bundles).

    python examples/null_calibration.py [--data fashion-mnist] [--draws 20]
"""

from __future__ import annotations

import sys

import studies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = studies.study_parser(__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=20)
    args = parser.parse_args(argv)
    study = studies.setup(args)
    tables, payload = [], []
    for lam in (0.0, 1e-2):
        config = (("penalty", lam),) if lam else ()
        spec = studies.RunSpec("dfa", study.seeds[0], config, arch_config=tuple(study.arch_config.items()), epochs=study.epochs)
        path = studies.run(study.data, spec, study.out, study.device, study.log)
        calib = studies.null_calibration(path, study.data, n=args.draws, batch_size=study.batch_size)
        mean, std = calib["deep_null"]
        tables.append(f"**DFA, λ = {lam:g}** — deep-layer null {mean:+.3f} ± {std:.3f} (n = {args.draws})\n\n"
                      + studies.null_table(calib))
        payload.append(calib)
    study.write("null_calibration", "Null calibration", "\n\n".join(tables),
                "python examples/null_calibration.py " + " ".join(argv), payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
