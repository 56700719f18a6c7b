"""Threshold sensitivity: separation gaps of (a) and (b) and the verdicts that flip as each
threshold is scaled. Runs (or reuses) the audit's bundles.

    python examples/threshold_sensitivity.py [--data fashion-mnist]
"""

from __future__ import annotations

import sys

import studies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    study = studies.setup(studies.study_parser(__doc__.splitlines()[0]).parse_args(argv))
    results = studies.run_audit(study)
    table = studies.separation_table(results) + "\n\n" + studies.sensitivity_table(results)
    study.write("threshold_sensitivity", "Threshold sensitivity", table,
                "python examples/threshold_sensitivity.py " + " ".join(argv), studies.separation(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
