"""The CI recipe in examples/ci uses only options the plugin defines."""

from __future__ import annotations

import re
from pathlib import Path

WORKFLOW = Path(__file__).parents[1] / "examples" / "ci" / "fa-protocol.yml"


def test_the_workflow_uses_only_real_options(pytestconfig):
    text = WORKFLOW.read_text()
    used = set(re.findall(r"--fa-[a-z-]+", text))
    assert {"--fa-checkpoint", "--fa-report-md", "--fa-plot", "--fa-compare", "--fa-compare-fail"} <= used
    known = {opt for group in pytestconfig._parser._groups for o in group.options for opt in o.names()}
    assert used <= known, sorted(used - known)


def test_the_workflow_runs_the_protocol_on_the_trained_checkpoint_and_uploads_the_reports():
    text = WORKFLOW.read_text()
    assert "PYTEST_FA_CACHE: .fa-cache" in text and "path: .fa-cache" in text
    assert "path: fa/" in text and "if: always()" in text
    train = text.index("python train.py")
    assert train < text.index("pytest -p no:cacheprovider --fa-checkpoint=runs/")
