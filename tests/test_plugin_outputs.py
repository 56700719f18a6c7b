"""``--fa-plot`` and ``--fa-compare`` through the command line, on real bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_fa import __version__

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def saved_report(version: str = __version__, diagnostics: dict | None = None) -> str:
    """A saved report of one checkpoint that compare can read, as JSON text."""
    if diagnostics is None:
        diagnostics = {key: {"fires": False, "value": 1.0} for key in "abcd"}
    return json.dumps({"pytest_fa": version, "reports": [{"label": "x.pt", "diagnostics": diagnostics}]})


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--fa-device=cpu", "-p", "no:cacheprovider", *args)


def outcomes(result: pytest.RunResult) -> dict[str, pytest.TestReport]:
    return {
        rep.nodeid.split("::")[-1] + "@" + Path(rep.nodeid.split("[", 1)[1].split("]::")[0]).name: rep
        for rep in result.reprec.getreports("pytest_runtest_logreport")
        if rep.when == "call" or (rep.when == "setup" and not rep.passed)
    }


def test_fa_plot_writes_one_png_per_checkpoint(pytester, bp_bundle, dfa_bundle):
    from matplotlib.image import imread

    run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1",
        "--fa-plot=figures/run1")
    files = sorted((pytester.path / "figures" / "run1").iterdir())
    assert [f.name for f in files] == sorted([Path(bp_bundle).stem + ".png", Path(dfa_bundle).stem + ".png"])
    for file in files:
        assert file.read_bytes()[:8] == PNG_SIGNATURE
        height, width = imread(file).shape[:2]
        assert (width, height) == (1800, 480)  # three panels: the third, which block learned


def test_fa_plot_refuses_a_file_at_start_up(pytester, bp_bundle):
    (pytester.path / "taken").write_text("")
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-plot=taken")
    result.stderr.fnmatch_lines(["*--fa-plot=taken is a file; give a folder for the figures*"])
    assert result.ret == pytest.ExitCode.USAGE_ERROR



def test_the_per_layer_table_and_json_carry_the_block_drops_and_the_feedback_angle(pytester, dfa_bundle):
    result = run(pytester, f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1", "--fa-report-json=r.json")
    result.stdout.fnmatch_lines([
        "layer*Γ_l*null (n=20)*drop rm*drop reset*∠(W,B_l)", "h_0 *—*—*not defined", "h_4 * pp * pp *°",
        "drop rm / drop reset = acc − acc with the block writing h_l removed*",
        "*∠(W,B_l) not defined at layers [[]0, 1, 2, 3[]]: DFA's B_l below the top*",
    ])
    report = json.loads((pytester.path / "r.json").read_text())["reports"][0]
    layers = report["layers"]
    assert report["ablation"]["status"] == "ok" and report["ablation"]["samples"] == 1200
    assert report["ablation"]["accuracy"] == report["accuracy"]["headline"]
    assert layers[0]["removed_status"] == layers[0]["reset_status"] == ""
    for layer in layers[1:]:
        assert layer["removed_status"] == layer["reset_status"] == "ok"
        assert isinstance(layer["removed_drop_pp"], float) and isinstance(layer["reset_drop_pp"], float)
    assert layers[-1]["wb_status"] == "ok" and 0.0 <= layers[-1]["wb_angle_deg"] <= 180.0
    assert all(layer["wb_angle_deg"] is None and layer["wb_status"].startswith("not defined") for layer in layers[:-1])


def test_fa_no_ablation_leaves_the_drops_out_and_bp_has_no_angle(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1", "--fa-no-ablation",
                 "--fa-report-json=r.json")
    assert "drop rm" not in result.stdout.str() and "∠(W,B_l)" not in result.stdout.str()
    report = json.loads((pytester.path / "r.json").read_text())["reports"][0]
    assert report["ablation"] == {} and report["weight_backward"] == []
    assert all(layer["removed_status"] == layer["wb_status"] == "" for layer in report["layers"])

@pytest.fixture
def saved(pytester, bp_bundle, dfa_bundle) -> dict:
    """A first run's JSON report, saved as ``saved.json``."""
    run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1",
        "--fa-report-json=saved.json")
    return json.loads((pytester.path / "saved.json").read_text())


def _save(pytester, payload, name="edited.json") -> str:
    (pytester.path / name).write_text(json.dumps(payload))
    return name


def test_an_unchanged_run_passes_its_compare_items(pytester, bp_bundle, dfa_bundle, saved):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1",
                 "--fa-compare=saved.json", "--fa-compare-fail=headline_acc:1pp", "--fa-compare-fail=deep_gamma:0.05")
    reports = outcomes(result)
    bp, dfa = Path(bp_bundle).name, Path(dfa_bundle).name
    assert reports[f"compare@{bp}"].passed and reports[f"compare@{dfa}"].passed
    result.stdout.fnmatch_lines(["*pytest-fa compare with saved.json*", f"{bp}*headline_acc*ok (1pp)*"])


def test_a_figure_beyond_its_tolerance_fails_the_compare_item_with_the_numbers(pytester, bp_bundle, saved):
    bp = Path(bp_bundle).name
    report = next(r for r in saved["reports"] if r["label"] == bp)
    now = report["accuracy"]["headline"]
    report["accuracy"]["headline"] = now + 0.05
    name = _save(pytester, saved)
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1", f"--fa-compare={name}",
                 "--fa-compare-fail=headline_acc:1pp")
    failed = outcomes(result)[f"compare@{bp}"]
    assert failed.failed
    text = str(failed.longrepr)
    assert "headline_acc" in text and f"{now + 0.05:.4f}" in text and f"{now:.4f}" in text
    assert outcomes(result)[f"residual_growth@{bp}"].passed
    loose = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1", f"--fa-compare={name}",
                "--fa-compare-fail=headline_acc:10pp")
    assert outcomes(loose)[f"compare@{bp}"].passed


def test_a_diagnostic_that_crosses_its_threshold_fails_and_one_that_clears_does_not(pytester, bp_bundle, saved):
    bp = Path(bp_bundle).name
    growth = next(r for r in saved["reports"] if r["label"] == bp)["diagnostics"]["a"]["value"]
    crossed = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1", "--fa-compare=saved.json",
                  f"--fa-max-growth={growth * 0.9}")
    failed = outcomes(crossed)[f"compare@{bp}"]
    assert failed.failed and "crossed" in str(failed.longrepr) and "growth" in str(failed.longrepr)
    strict = next(r for r in saved["reports"] if r["label"] == bp)
    strict["diagnostics"]["a"]["fires"] = True
    cleared = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1",
                  f"--fa-compare={_save(pytester, saved)}")
    assert outcomes(cleared)[f"compare@{bp}"].passed
    cleared.stdout.fnmatch_lines([f"{bp}*growth*cleared*"])


def test_a_checkpoint_missing_from_the_saved_report_is_skipped(pytester, bp_bundle, dfa_bundle, saved):
    saved["reports"] = [r for r in saved["reports"] if r["label"] != Path(dfa_bundle).name]
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1",
                 f"--fa-compare={_save(pytester, saved)}")
    skipped = outcomes(result)[f"compare@{Path(dfa_bundle).name}"]
    assert skipped.skipped and "nothing to compare" in str(skipped.longrepr)


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        (None, ["--fa-compare=absent.json"], "*--fa-compare=absent.json:*"),
        ("not json", ["--fa-compare=bad.json"], "*--fa-compare=bad.json:*JSON*"),
        (saved_report(), ["--fa-compare=bad.json", "--fa-compare-fail=speed:5%"], "*--fa-compare-fail:*speed*"),
        (saved_report(diagnostics={}), ["--fa-compare=bad.json"], "*--fa-compare=bad.json:*has no diagnostic (d)*"),
        (saved_report("99.0.0"), ["--fa-compare=bad.json"],
         f"*--fa-compare=bad.json:*written by pytest-fa 99.0.0, this is {__version__}; re-save it*--fa-report-json=PATH*"),
        (None, ["--fa-compare-fail=headline_acc:1pp"], "*--fa-compare-fail=*tolerances apply to a comparison: give the saved report with --fa-compare=PATH too*"),
    ],
    ids=["missing", "not-json", "unknown-figure", "no-diagnostics", "newer-version", "fail-without-compare"],
)
def test_a_bad_compare_option_is_a_usage_error(pytester, bp_bundle, setup, args, message):
    if setup is not None:
        (pytester.path / "bad.json").write_text(setup)
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
