"""Five-method × three-seed audit: status-quo verdict vs protocol verdict (the paper's Table 1).

    python examples/audit.py                                # MNIST-1D, BP/EP/DFA/SB/CB × 42/123/456
    python examples/audit.py --data fashion-mnist
    python examples/audit.py --data cifar10 --data-root ~/data
"""

from __future__ import annotations

import sys

import studies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    study = studies.setup(studies.study_parser(__doc__.splitlines()[0]).parse_args(argv))
    results = studies.run_audit(study)
    table = studies.audit_table(results, study.data.num_classes)
    study.write("audit", "Five-method audit", table, "python examples/audit.py " + " ".join(argv), [vars(r) for r in results])
    return 0


if __name__ == "__main__":
    sys.exit(main())
