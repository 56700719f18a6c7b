"""Decision-utility ablation: how many methods each reporting strategy walks back (S0 … S_full).

Runs (or reuses) the audit's bundles.

    python examples/decision_utility.py [--data fashion-mnist]
"""

from __future__ import annotations

import sys

import studies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    study = studies.setup(studies.study_parser(__doc__.splitlines()[0]).parse_args(argv))
    results = studies.run_audit(study)
    table = studies.decision_utility_table(results, study.data.num_classes)
    study.write("decision_utility", "Decision-utility ablation", table, "python examples/decision_utility.py " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
