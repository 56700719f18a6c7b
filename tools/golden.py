"""Writes the stored copy of the golden run (not part of the package): the README's main-job
protocol on the fixed bundles of tests/data/golden/.

    python tools/golden.py        # rewrite tests/data/golden/golden.json and report.md

tests/test_golden_run.py runs the same protocol and compares its outputs with the stored copy.
Rewrite it only for an intended change of behaviour, in a commit of its own.

The bundles are fixed, and nothing in the run trains: training is not bit-identical across
CPUs and thread counts. They were made once (ResMLP d = 64, L = 4, on MNIST-1D of 6 000
samples; DFA trained on until its residual stream explodes, as the main job's DFA does) with

    fa-train --num-samples 6000 --width 64 --depth 4 --methods bp fa frozen --seeds 42
    fa-train --num-samples 6000 --width 64 --depth 4 --methods bp --seeds 43
    fa-train --num-samples 6000 --width 64 --depth 4 --methods dfa --epochs 60 --seeds 42

and the accuracy of that frozen-blocks control, 0.2992, is given as --fa-frozen-acc.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "data" / "golden"
CHECKPOINTS = ("bp_s42.pt", "bp_s43.pt", "dfa_s42.pt", "fa_s42.pt")
FROZEN_ACC = "0.2992"


class _Outcomes:
    """Each item's outcome by node id (a failed setup or teardown counts as the item's)."""

    def __init__(self) -> None:
        self.items: dict[str, str] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.items[report.nodeid] = report.outcome


def run(out: Path) -> dict:
    """The main job's protocol command on the golden bundles, its outputs written under the
    empty folder ``out``: ``exit_code``, ``items`` (outcome by node id), ``report`` (the JSON
    report), ``figures`` (the PNG names) and ``markdown``. The device is the CPU, the
    frozen-blocks accuracy given."""
    args = [
        "-q", "-p", "no:cacheprovider", str(out), "--fa-device=cpu", f"--fa-frozen-acc={FROZEN_ACC}",
        *(f"--fa-checkpoint={name}" for name in CHECKPOINTS),
        f"--fa-report-json={out / 'report.json'}", f"--fa-report-md={out / 'report.md'}",
        f"--fa-plot={out / 'figures'}",
    ]
    outcomes = _Outcomes()
    cwd = os.getcwd()
    os.chdir(GOLDEN)  # checkpoints named relative to their folder: no path of this machine in the outputs
    try:
        exit_code = pytest.main(args, plugins=[outcomes])
    finally:
        os.chdir(cwd)
    return {
        "exit_code": int(exit_code),
        "items": outcomes.items,
        "report": json.loads((out / "report.json").read_text(encoding="utf-8")),
        "figures": sorted(path.name for path in (out / "figures").iterdir()),
        "markdown": (out / "report.md").read_text(encoding="utf-8"),
    }


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        result = run(Path(folder))
    (GOLDEN / "report.md").write_text(result.pop("markdown"), encoding="utf-8")
    text = json.dumps(result, indent=2, ensure_ascii=False)
    (GOLDEN / "golden.json").write_text(text + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN / 'golden.json'} and {GOLDEN / 'report.md'} (pytest exit status {result['exit_code']})")


if __name__ == "__main__":
    main()
