"""Temporal replay: the first epoch at which (a) and (b) fire for every audited run, the
accuracy at that moment and the compute an early stop would have saved. Reads the per-epoch
monitor the trainer stores in each bundle (runs or reuses the audit).

    python examples/temporal_replay.py [--data fashion-mnist]
"""

from __future__ import annotations

import sys

import studies


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    study = studies.setup(studies.study_parser(__doc__.splitlines()[0]).parse_args(argv))
    results = studies.run_audit(study)
    study.write("temporal_replay", "Temporal replay", studies.temporal_table(results),
                "python examples/temporal_replay.py " + " ".join(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
