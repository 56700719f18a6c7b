"""pytest-html integration: ``--html=report.html --self-contained-html`` carries each checkpoint's
verdict, per-layer table and figure; without pytest-html, or with it but no ``--html``, the
plugin runs as before."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser
from pathlib import Path

import pytest

pytest.importorskip("pytest_html")

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DATA_PNG = "data:image/png;base64,"


@pytest.fixture(scope="module")
def exploded_bundle(bp_bundle, tmp_path_factory) -> Path:
    """The BP bundle with block 0's output layer scaled by 1e9: the residual stream grows by
    orders of magnitude more than 50× at block 0 and the reference gradient falls as far below
    the floor, so (a) and (b) fire and the checkpoint is walked back."""
    from pytest_fa.training.checkpoint import load_bundle, save_bundle

    bundle = load_bundle(bp_bundle)
    for name in ("blocks.0.w2.weight", "blocks.0.w2.bias"):
        bundle.state_dict[name] = bundle.state_dict[name] * 1e9
    return save_bundle(tmp_path_factory.mktemp("exploded") / "exploded_s42.pt", bundle)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("--fa-device=cpu", "-p", "no:cacheprovider", "--fa-frozen-acc=0",
                              "--fa-report-json=report.json", *args)


class _DataContainer(HTMLParser):
    """The JSON blob pytest-html 4 writes into ``<div id="data-container" data-jsonblob=…>``."""

    blob: dict | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if attrs.get("id") == "data-container":
            self.blob = json.loads(attrs["data-jsonblob"])


def page_tests(path: Path) -> dict[str, list[dict]]:
    parser = _DataContainer()
    parser.feed(path.read_text(encoding="utf-8"))
    assert parser.blob is not None, "no data-container in the page"
    return parser.blob["tests"]


def protocol_extras(tests: dict[str, list[dict]], checkpoint: Path) -> dict[str, list[dict]]:
    """Item name -> the extras of its call report, for the protocol items of ``checkpoint``."""
    prefix = f"fa-protocol[{checkpoint}]::"
    return {nodeid.removeprefix(prefix): [e for entry in entries for e in entry["extras"]]
            for nodeid, entries in tests.items() if nodeid.startswith(prefix)}


def test_the_html_report_carries_each_checkpoints_verdict_table_and_figure(pytester, bp_bundle, exploded_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={exploded_bundle}",
                 "--html=report.html", "--self-contained-html")
    reports = {r["label"]: r for r in json.loads((pytester.path / "report.json").read_text())["reports"]}
    assert reports[bp_bundle.name]["verdict"] == "trustworthy"
    assert reports[exploded_bundle.name]["verdict"].startswith("needs walk-back: (a), (b")
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the exploded checkpoint's (a) and (b) items

    tests = page_tests(pytester.path / "report.html")
    for checkpoint in (bp_bundle, exploded_bundle):
        report = reports[checkpoint.name]
        items = protocol_extras(tests, checkpoint)
        assert sorted(items) == sorted(["residual_growth", "grad_floor", "direction_stability", "frozen_margin"])
        for name, extras in items.items():
            html = [e["content"] for e in extras if e["format_type"] == "html"]
            assert html, f"{checkpoint}::{name} carries no HTML extra"
            assert f"pytest-fa verdict on {checkpoint}: <strong>{report['verdict']}</strong>" in html[0], name
        # the figure and the per-layer table once per checkpoint, on its first item
        first = items["residual_growth"]
        (figure,) = [e for e in first if e["format_type"] == "image"]
        assert figure["name"] == f"{checkpoint.name}: per-layer figure"
        assert figure["content"].startswith(DATA_PNG)
        assert base64.b64decode(figure["content"].removeprefix(DATA_PNG))[:8] == PNG_SIGNATURE
        (table,) = [e["content"] for e in first if e["format_type"] == "html" and "<table" in e["content"]]
        assert "<th>‖h_l‖</th>" in table and "<th>Γ_l</th>" in table
        for layer in report["layers"]:
            assert f"<tr><td>h_{layer['index']}</td><td>{layer['h_norm']:.3g}</td>" in table
        assert table.count("<tr><td>h_") == len(report["layers"])
        for name in ("grad_floor", "direction_stability", "frozen_margin"):
            assert not [e for e in items[name] if e["format_type"] == "image" or "<table" in e["content"]], name


@pytest.mark.parametrize("html_args", [("-p", "no:html"), ()], ids=["without-pytest-html", "html-not-requested"])
def test_without_an_html_report_the_plugin_runs_as_before(pytester, bp_bundle, exploded_bundle, html_args):
    checkpoints = (f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={exploded_bundle}")
    result = run(pytester, *checkpoints, *html_args)
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(["*pytest-fa protocol*", f"{bp_bundle.name}*trustworthy",
                                 f"{exploded_bundle.name}*needs walk-back: (a), (b*"])
    calls = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.when == "call"]
    assert len(calls) == 8 and not any(getattr(r, "extras", None) or getattr(r, "extra", None) for r in calls)
    assert not list(pytester.path.glob("*.html"))
    report = json.loads((pytester.path / "report.json").read_text())
    assert [r["label"] for r in report["reports"]] == [bp_bundle.name, exploded_bundle.name]
