"""End to end: a checkpoint bundle whose feedback matrices were stripped is reported by
``pytest --fa-pitfalls --fa-checkpoint=...`` as exposed to pitfall 6.5, with the fix; the
intact bundle is not."""

from __future__ import annotations

import pytest

from pytest_fa.pitfalls import by_id
from pytest_fa.training.checkpoint import load_bundle, save_bundle

PITFALL = by_id("6.5")


def run_suite(pytester, checkpoint):
    """The shipped suite against one checkpoint, narrowed to this pitfall's module and its
    checkpoint-aware test (so no training regime runs)."""
    return pytester.runpytest_subprocess(
        "--fa-pitfalls",
        "-p", "no:cacheprovider",
        f"--fa-checkpoint={checkpoint}",
        str(PITFALL.path),
        "-k", "user_checkpoint",
    )


def table_row(text: str) -> str:
    rows = [line for line in text.splitlines() if line.startswith(f"{PITFALL.id} ")]
    assert len(rows) == 1, text[-2000:]
    return rows[0]


def test_a_bundle_with_its_feedback_stripped_is_exposed_to_pitfall_6_5(dfa_bundle, pytester, tmp_path):
    bundle = load_bundle(dfa_bundle)
    assert bundle.method == "dfa" and bundle.feedback
    bundle.feedback = []
    stripped = save_bundle(tmp_path / "dfa_stripped.pt", bundle)

    result = run_suite(pytester, stripped)

    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, text[-3000:]
    result.assert_outcomes(failed=1)
    assert "EXPOSED to pitfall 6.5 (Missing feedback matrices make Γ fall back to cos(BP, BP) = 1)" in text
    assert "dfa_stripped.pt: method 'dfa' trains with fixed feedback matrices but the bundle carries none" in text
    assert f"fix: {PITFALL.fix}" in text
    assert "pytest-fa pitfalls" in text
    assert table_row(text).rstrip().endswith("EXPOSED")


def test_the_intact_bundle_is_not_exposed(dfa_bundle, pytester):
    result = run_suite(pytester, dfa_bundle)

    text = result.stdout.str()
    assert result.ret == pytest.ExitCode.OK, text[-3000:]
    result.assert_outcomes(passed=1)
    assert "EXPOSED" not in text
    assert table_row(text).rstrip().endswith("not exposed")
