"""Tests of the pytest plugin through ``pytester``: options, ini keys, the generated protocol
items, the terminal section, the JSON report (checked against an independent recomputation in
plain torch), the ``fa_protocol`` marker and fixtures, and bad input.

The recomputation below deliberately uses none of ``pytest_fa.core.diagnostics``/``probe``/``report``:
only the bundle loader, the data loader and the model's own forward pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path

# pytester restores sys.modules after every in-process run, so whatever an inner session imports
# first is imported (and assertion-rewritten) again in the next one: the package's own modules and
# what the hypothesis plugin imports in its terminal summary. Import them once up front.
import hypothesis.internal.observability  # noqa: F401
import pytest
import torch
import torch.nn.functional as F

import pytest_fa
import pytest_fa.assertions  # noqa: F401
import pytest_fa.protocol  # noqa: F401
import pytest_fa.training.trainer  # noqa: F401
from pytest_fa.core import registry
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.training.checkpoint import load_bundle, load_checkpoint
from pytest_fa.training.data import dataset_from_spec, eval_batches

ITEM_NAMES = ("residual_growth", "grad_floor", "direction_stability", "frozen_margin")
PACKAGE_DIR = str(Path(pytest_fa.__file__).parent)
OPTION_NAMES = (
    "checkpoint", "model", "hidden", "block-output", "pooling", "credit", "reference-model", "data", "data-root", "device",
    "eval-batches", "batch-size", "frozen-acc", "frozen-epochs", "report-json", "report-md", "plot",
    "compare", "compare-fail", "lint", "credit-map",
    *(f.name.replace("_", "-") for f in dataclasses.fields(DiagnosticThresholds)),
)
FLAG_NAMES = ("pitfalls", "no-ablation")


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Speed only. The models are tiny: on a loaded 2-core machine torch's second OpenMP thread
    makes every small matmul spin-wait (about 100× slower), so run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def run(pytester: pytest.Pytester, *args: str, cache: bool = False) -> pytest.RunResult:
    """In-process pytest run on the CPU; the cache provider only where a test needs it."""
    base = ["--fa-device=cpu"] + ([] if cache else ["-p", "no:cacheprovider"])
    return pytester.runpytest(*base, *args)


def item_reports(result: pytest.RunResult) -> dict[str, pytest.TestReport]:
    """nodeid -> the report that decided the outcome (setup failure/skip, else call)."""
    out: dict[str, pytest.TestReport] = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or (rep.when == "setup" and not rep.passed):
            out[rep.nodeid] = rep
    return out


def protocol_ids(path) -> list[str]:
    return [f"fa-protocol[{path}]::{name}" for name in ITEM_NAMES]


def output(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def assert_no_internal_traceback(text: str) -> None:
    assert "Traceback" not in text, text
    assert PACKAGE_DIR not in text, text  # no source dump of pytest_fa internals


def section_lines(result: pytest.RunResult) -> list[str]:
    """Non-empty lines of the "pytest-fa protocol" terminal section."""
    text = result.stdout.str()
    return [line for line in text[text.index("pytest-fa protocol =") :].splitlines()[1:] if line.strip()]


def read_json(pytester: pytest.Pytester, name: str = "out.json") -> dict:
    return json.loads((pytester.path / name).read_text())


def recompute(path, num_batches: int = 8, batch_size: int = 128) -> dict:
    """Diagnostics (a)–(c), per-layer medians and DFA Γ_l by hand, in plain torch."""
    loaded = load_checkpoint(path)
    model = loaded.model.eval()
    data = dataset_from_spec(loaded.bundle.data)
    batches = eval_batches(data, num_batches, batch_size, seed=0)
    feedback = list(loaded.bundle.feedback)
    h_norms, g_norms, mids, cosines = None, None, [], None
    for x, y in batches:
        logits, hidden = model(x, return_hidden=True)
        grads = torch.autograd.grad(F.cross_entropy(logits, y), hidden)
        if h_norms is None:
            h_norms = [[] for _ in hidden]
            g_norms = [[] for _ in hidden]
            cosines = [[] for _ in hidden]
        for layer, (h, g) in enumerate(zip(hidden, grads)):
            h_norms[layer].append(torch.sqrt((h.detach().double() ** 2).sum(dim=1)))
            g_norms[layer].append(torch.sqrt((g.double() ** 2).sum(dim=1)))
        depth = len(hidden) - 1
        mids.append(grads[depth // 2].double().mean(dim=0))
        if feedback:
            probs = torch.softmax(logits.detach().double(), dim=1)
            e = probs - F.one_hot(y, probs.shape[1]).double()
            for layer, b in enumerate(feedback):
                a = e @ b.double()
                g = grads[layer].double()
                cosines[layer].append((a * g).sum(dim=1) / (a.norm(dim=1) * g.norm(dim=1)))
    h_med = [float(torch.cat(v).median()) for v in h_norms]
    g_med = [float(torch.cat(v).median()) for v in g_norms]
    growth = [h_med[i + 1] / h_med[i] for i in range(len(h_med) - 1)]
    units = torch.stack([m / m.norm() for m in mids])
    k = units.shape[0]
    pairs = [float(units[i] @ units[j]) for i in range(k) for j in range(i + 1, k)]
    with torch.no_grad():
        headline = float((model(data.x_test).argmax(dim=1) == data.y_test).double().mean())
    return {
        "h_med": h_med,
        "g_med": g_med,
        "growth": growth,
        "a": max(growth),
        "a_block": growth.index(max(growth)),
        "b": g_med[-1] * batch_size / 128,
        "c": sum(pairs) / len(pairs),
        "mid": (len(h_med) - 1) // 2,
        "gamma": [float(torch.cat(c).mean()) for c in cosines] if feedback else None,
        "headline": headline,
        "depth": len(h_med) - 1,
    }


@pytest.fixture(scope="module")
def bp_truth(bp_bundle):
    return recompute(bp_bundle)


@pytest.fixture(scope="module")
def dfa_truth(dfa_bundle):
    return recompute(dfa_bundle)


# --------------------------------------------------------------------------------------------
# registration: options, ini keys, marker, no torch on import
# --------------------------------------------------------------------------------------------


def test_help_lists_every_option_in_one_group(pytester):
    result = pytester.runpytest("--help")
    assert result.ret == 0
    text = result.stdout.str()
    start = text.index("pytest-fa: evaluation protocol for local-credit methods:")
    group = text[start : text.index("\n\n", start)]
    for name in OPTION_NAMES:
        assert f"--fa-{name}=" in group, name
    for name in FLAG_NAMES:
        assert f"--fa-{name} " in group, name
    flags = re.findall(r"^  (--fa-[a-z-]+)", text, flags=re.MULTILINE)
    expected = sorted(f"--fa-{name}" for name in OPTION_NAMES + FLAG_NAMES)
    assert sorted(flags) == expected  # nothing outside the group
    for name in OPTION_NAMES + FLAG_NAMES:
        assert f"fa_{name.replace('-', '_')} (" in text, name  # ini key
    assert "fa_checkpoint (linelist)" in text


def test_markers_lists_fa_protocol(pytester):
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.fa_protocol(**thresholds):*--fa-checkpoint*"])


def test_importing_the_plugin_does_not_import_torch(pytester):
    result = pytester.run(
        sys.executable, "-c", "import pytest_fa.plugin, sys; assert 'torch' not in sys.modules, 'torch'"
    )
    assert result.ret == 0, output(result)
    # nor does a whole pytest session without a checkpoint
    pytester.makepyfile(test_plain="def test_ok():\n    pass\n")
    result = pytester.run(
        sys.executable, "-c",
        "import sys, pytest\n"
        "rc = pytest.main(['-q', '-p', 'no:cacheprovider', 'test_plain.py'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, (rc, 'torch' in sys.modules)",
    )
    assert result.ret == 0, output(result)


# --------------------------------------------------------------------------------------------
# generated protocol items on one checkpoint; frozen-baseline cache
# --------------------------------------------------------------------------------------------


def test_single_checkpoint_items_terminal_and_frozen_cache(pytester, bp_bundle):
    args = (f"--fa-checkpoint={bp_bundle}", "--fa-report-json=out.json", "-v")
    first = run(pytester, *args, cache=True)
    reports = item_reports(first)
    assert list(reports) == protocol_ids(bp_bundle)
    assert all(rep.when == "call" for rep in reports.values())  # every item ran
    for name in ITEM_NAMES:
        first.stdout.fnmatch_lines([f"fa-protocol[[]{bp_bundle}[]]::{name} *"])
    payload = read_json(pytester)
    (report,) = payload["reports"]
    lines = section_lines(first)
    section = "\n".join(lines)
    assert lines[0].split() == [
        "checkpoint", "method", "acc", "frozen", "(a)", "growth", "(b)", "‖g_L‖", "(c)", "stab.",
        "(d)", "margin", "Γ", "mean", "verdict",
    ]
    assert lines[2].split()[:2] == [Path(bp_bundle).name, "bp"]
    for layer in range(5):
        assert any(line.startswith(f"h_{layer} ") for line in lines), layer
    assert f"VERDICT: {report['verdict']}" in section
    # outcomes follow the report
    ids = protocol_ids(bp_bundle)
    for key, nodeid in zip("abd", (ids[0], ids[1], ids[3])):
        assert reports[nodeid].failed == bool(report["diagnostics"][key]["fires"]), nodeid
    # the frozen baseline was trained now and cached in the pytest cache dir
    cached = list((pytester.path / ".pytest_cache" / "d" / "pytest-fa").glob("frozen-*.pt"))
    assert len(cached) == 1
    assert "trained now" in report["context"]["frozen_baseline"]
    stamp = cached[0].stat().st_mtime_ns

    second = run(pytester, *args, cache=True)
    assert second.ret == first.ret
    (again,) = read_json(pytester)["reports"]
    assert "from cache" in again["context"]["frozen_baseline"]
    assert again["accuracy"]["frozen_baseline"] == report["accuracy"]["frozen_baseline"]
    assert cached[0].stat().st_mtime_ns == stamp  # not rewritten


def test_a_checkpoint_run_reads_the_checkpoint_file_once(pytester, bp_bundle, monkeypatch):
    """The read before collection (an unreadable file fails first) is the read the run loads."""
    reads = []
    load = torch.load

    def counted(f, *args, **kwargs):
        reads.append(Path(f).resolve() if isinstance(f, (str, os.PathLike)) else f)
        return load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counted)
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1")
    assert len(item_reports(result)) == len(ITEM_NAMES)
    assert reads.count(Path(bp_bundle).resolve()) == 1, reads


def test_without_cache_provider_the_baseline_goes_to_the_package_cache(pytester, bp_bundle, isolated_cache):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "-k", "frozen_margin")
    assert len(item_reports(result)) == 1
    assert not (pytester.path / ".pytest_cache").exists()
    assert list((isolated_cache / "frozen").glob("frozen-*.pt"))


# --------------------------------------------------------------------------------------------
# a failing protocol item
# --------------------------------------------------------------------------------------------


def test_failing_growth_item_shows_value_threshold_layer_meaning_verdict(pytester, bp_bundle, bp_truth):
    threshold = bp_truth["a"] / 2  # (a) fires by construction
    result = run(
        pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-max-growth={threshold!r}", "--fa-frozen-acc=0",
        "-k", "residual_growth",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, deselected=3)
    (rep,) = item_reports(result).values()
    assert rep.nodeid == protocol_ids(bp_bundle)[0]
    text = str(rep.longrepr)
    assert f"{bp_truth['a']:.3g}×" in text
    assert f"fires > {threshold:.3g}×" in text
    assert f"at block {bp_truth['a_block']}" in text
    assert f"‖h_{bp_truth['a_block'] + 1}‖ / ‖h_{bp_truth['a_block']}‖" in text
    assert f"meaning: {registry.get('a').meaning}" in text
    assert "verdict: needs walk-back: (a)" in text
    assert_no_internal_traceback(output(result))
    result.stdout.fnmatch_lines(["VERDICT: needs walk-back: (a)", f"  (a) {registry.get('a').meaning}"])


def test_failing_margin_item(pytester, bp_bundle, bp_truth):
    result = run(
        pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-margin-pp=99", "--fa-frozen-acc=0",
        "-k", "frozen_margin",
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.assert_outcomes(failed=1, deselected=3)
    (rep,) = item_reports(result).values()
    text = str(rep.longrepr)
    margin = 100 * bp_truth["headline"]
    assert f"{margin:.3g} pp (fires < 99 pp)" in text
    assert f"trained {bp_truth['headline']:.4f} − frozen 0.0000" in text
    assert f"meaning: {registry.get('d').meaning}" in text
    assert "verdict: needs walk-back: (d)" in text
    assert_no_internal_traceback(output(result))


def test_drift_dominated_reference_alone_does_not_fail_the_run(pytester, bp_bundle, bp_truth):
    """(c) only names a sub-mode and is not part of the walk-back: with (a), (b), (d) clean the
    verdict is trustworthy and the run must pass, with the sub-mode reported."""
    result = run(
        pytester, f"--fa-checkpoint={bp_bundle}", "--fa-drift-ceiling=-0.99", "--fa-frozen-acc=0",
        "--fa-report-json=out.json",
    )
    (report,) = read_json(pytester)["reports"]
    assert report["diagnostics"]["c"]["fires"] is True
    assert report["verdict"] == "trustworthy"
    result.stdout.fnmatch_lines(["*direction stability*drift-dominated*", "VERDICT: trustworthy"])
    assert item_reports(result)[protocol_ids(bp_bundle)[2]].passed
    assert result.ret == pytest.ExitCode.OK


# --------------------------------------------------------------------------------------------
# two checkpoints, the JSON report and an independent recomputation
# --------------------------------------------------------------------------------------------


def test_two_checkpoints_json_matches_independent_recomputation(pytester, bp_bundle, dfa_bundle, bp_truth, dfa_truth):
    result = run(
        pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-report-json=out.json",
        cache=True,
    )
    reports = item_reports(result)
    assert list(reports) == protocol_ids(bp_bundle) + protocol_ids(dfa_bundle)
    lines = section_lines(result)
    section = "\n".join(lines)
    table = lines[0:4]
    assert table[0].startswith("checkpoint") and set(table[1]) <= {"-", " "}
    assert table[2].startswith(Path(bp_bundle).name) and table[3].startswith(Path(dfa_bundle).name)
    assert "JSON report: out.json" in section

    payload = read_json(pytester)
    assert payload["pytest_fa"] == pytest_fa.__version__
    assert [r["label"] for r in payload["reports"]] == [Path(bp_bundle).name, Path(dfa_bundle).name]
    verdict_lines = [line for line in section.splitlines() if line.startswith("VERDICT: ")]
    assert verdict_lines == [f"VERDICT: {r['verdict']}" for r in payload["reports"]]

    frozen_files = list((pytester.path / ".pytest_cache" / "d" / "pytest-fa").glob("frozen-*.pt"))
    assert len(frozen_files) == 1  # same arch, data, seed, recipe, epochs: one shared baseline
    frozen_acc = check_frozen_baseline(frozen_files[0], bp_bundle)

    for report, truth, path, row in zip(payload["reports"], (bp_truth, dfa_truth), (bp_bundle, dfa_bundle), table[2:]):
        bundle = load_bundle(path)
        d = report["diagnostics"]
        m = report["measurement"]
        assert m["batch_size"] == 128 and m["num_batches"] == 8 and m["samples"] == 1024
        assert m["dtype"] == "float32" and m["mode"] == "eval" and m["device"] == "cpu"
        assert report["thresholds"] == dataclasses.asdict(DiagnosticThresholds())
        assert report["context"]["method"] == bundle.method and report["context"]["data"] == "mnist1d"
        # (a)
        assert d["a"]["value"] == pytest.approx(truth["a"], rel=1e-6)
        assert d["a"]["layer"] == truth["a_block"]
        assert d["a"]["threshold"] == 50.0 and d["a"]["fires"] == (truth["a"] > 50.0)
        # (b)
        assert d["b"]["value"] == pytest.approx(truth["b"], rel=1e-6)
        assert d["b"]["layer"] == truth["depth"]
        assert d["b"]["fires"] == (truth["b"] < 1e-7)
        # (c)
        assert d["c"]["value"] == pytest.approx(truth["c"], rel=1e-6, abs=1e-9)
        assert d["c"]["layer"] == truth["mid"]
        assert d["c"]["fires"] == (truth["c"] > 0.30)
        assert ("drift-dominated" if truth["c"] > 0.30 else "noise-dominated") in d["c"]["detail"]
        # (d)
        assert report["accuracy"]["headline"] == pytest.approx(truth["headline"], abs=1e-12)
        assert report["accuracy"]["frozen_baseline"] == pytest.approx(frozen_acc, abs=1e-12)
        margin = 100 * (truth["headline"] - frozen_acc)
        assert d["d"]["value"] == pytest.approx(margin, abs=1e-9)
        assert d["d"]["fires"] == (margin < 2.0)
        # verdict
        fired = [k for k, fires in (("a", truth["a"] > 50), ("b", truth["b"] < 1e-7), ("d", margin < 2)) if fires]
        expected = "needs walk-back: " + ", ".join(f"({k})" for k in fired) if fired else "trustworthy"
        assert report["verdict"] == expected and report["fired"] == fired
        assert row.rstrip().endswith(expected)
        assert f"{truth['a']:.3g}×" in row
        # per layer
        layers = report["layers"]
        assert [r["index"] for r in layers] == list(range(truth["depth"] + 1))
        for i, r in enumerate(layers):
            assert r["h_norm"] == pytest.approx(truth["h_med"][i], rel=1e-6)
            assert r["g_norm"] == pytest.approx(truth["g_med"][i], rel=1e-6)
            if i:
                assert r["growth"] == pytest.approx(truth["growth"][i - 1], rel=1e-6)
        # items fail exactly where the walk-back diagnostics fire
        for key, nodeid in zip("abd", [protocol_ids(path)[j] for j in (0, 1, 3)]):
            assert reports[nodeid].failed == d[key]["fires"], nodeid
    # Γ: BP's credit is its own gradient; DFA's is e_T B_l
    bp_report, dfa_report = payload["reports"]
    assert all(r["gamma"] == pytest.approx(1.0, abs=1e-9) for r in bp_report["layers"])
    assert dfa_report["gamma"]["status"] == "computed"
    for r, expected in zip(dfa_report["layers"], dfa_truth["gamma"]):
        assert r["gamma_status"] == "ok" and r["gamma_samples"] == 1024
        assert r["gamma"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert dfa_report["gamma"]["mean_all_layers"] == pytest.approx(sum(dfa_truth["gamma"]) / 5, abs=1e-6)
    assert dfa_report["gamma"]["mean_deep_layers"] == pytest.approx(sum(dfa_truth["gamma"][1:]) / 4, abs=1e-6)


def check_frozen_baseline(file: Path, checkpoint) -> float:
    """The cached control: same architecture and budget, blocks still at their random init
    (the checkpoint's own seed), embedding trained. Returns its test accuracy, measured here."""
    from pytest_fa.core.interface import block_weights
    from pytest_fa.models import build_model

    frozen, trained = load_bundle(file), load_bundle(checkpoint)
    assert frozen.method == "frozen"
    assert (frozen.arch, frozen.arch_config, frozen.epochs) == (trained.arch, trained.arch_config, trained.epochs)
    assert frozen.data == trained.data and frozen.recipe == trained.recipe
    with torch.random.fork_rng():
        torch.manual_seed(trained.seed)
        init = build_model(trained.arch, **trained.arch_config)
    model = build_model(frozen.arch, **frozen.arch_config)
    model.load_state_dict(frozen.state_dict)
    frozen_ids = {id(p) for p in block_weights(init)}
    init_state = dict(init.named_parameters())
    for name, p in init_state.items():
        if id(p) in frozen_ids:
            assert torch.equal(frozen.state_dict[name], p.detach()), name
    assert not torch.equal(frozen.state_dict["embed.weight"], init_state["embed.weight"].detach())
    data = dataset_from_spec(frozen.data)
    with torch.no_grad():
        acc = float((model.eval()(data.x_test).argmax(dim=1) == data.y_test).double().mean())
    assert acc == pytest.approx(frozen.metrics["test_acc"], abs=1e-12)
    return acc


def test_batch_size_option_is_recorded_and_restates_the_floor(pytester, bp_bundle):
    truth = recompute(bp_bundle, batch_size=64)
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-batch-size=64", "--fa-frozen-acc=0",
                 "--fa-report-json=out.json", "-k", "grad_floor")
    result.assert_outcomes(passed=1, deselected=3)
    (report,) = read_json(pytester)["reports"]
    assert report["measurement"]["batch_size"] == 64 and report["measurement"]["samples"] == 512
    assert report["layers"][-1]["g_norm"] == pytest.approx(truth["g_med"][-1], rel=1e-6)
    # ‖g_L‖ at batch 64 is about twice that at 128; restated at 128 it is halved back
    assert report["diagnostics"]["b"]["value"] == pytest.approx(truth["g_med"][-1] * 64 / 128, rel=1e-6)
    result.stdout.fnmatch_lines(["*at eval batch 64, restated at batch 128*"])


@pytest.mark.parametrize("rule", ["decomposed", "paper"])
def test_b_rule_option_decides_whether_a_reference_at_the_floor_with_a_healthy_gain_fires(
    pytester, bp_bundle, rule
):
    # a floor of 1: BP's reference is "at the floor" with its gain O(1), as for a confident model
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0", "--fa-grad-floor=1",
                 f"--fa-b-rule={rule}", "--fa-report-json=out.json", "-k", "grad_floor")
    (report,) = read_json(pytester)["reports"]
    b = report["diagnostics"]["b"]
    assert b["submode"] == "error-saturated" and b["components"]["rule"] == rule
    assert b["components"]["gain"] > report["thresholds"]["gain_floor"]
    if rule == "paper":
        result.assert_outcomes(failed=1, deselected=3)
        assert "b" in report["fired"]
    else:
        result.assert_outcomes(passed=1, deselected=3)
        assert "b" not in report["fired"]
        result.stdout.fnmatch_lines(["*error-saturated*"])


def test_an_unknown_b_rule_is_a_usage_error(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0", "--fa-b-rule=strict")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-b-rule='strict': use one of decomposed, paper*"])


# --------------------------------------------------------------------------------------------
# ini keys
# --------------------------------------------------------------------------------------------


def test_ini_keys_work_like_options_and_the_command_line_wins(pytester, bp_bundle, dfa_bundle, bp_truth):
    threshold = bp_truth["a"] / 2
    pytester.makeini(
        f"""
        [pytest]
        fa_checkpoint =
            {bp_bundle}
        fa_max_growth = {threshold!r}
        fa_frozen_acc = 0
        """
    )
    result = run(pytester, "-k", "residual_growth")
    result.assert_outcomes(failed=1, deselected=3)
    (rep,) = item_reports(result).values()
    assert rep.nodeid == protocol_ids(bp_bundle)[0]
    assert f"fires > {threshold:.3g}×" in str(rep.longrepr)

    result = run(pytester, "-k", "residual_growth", "--fa-max-growth=1e9")
    result.assert_outcomes(passed=1, deselected=3)

    result = run(pytester, "--collect-only", "-q", f"--fa-checkpoint={dfa_bundle}")
    result.stdout.fnmatch_lines([f"fa-protocol[[]{dfa_bundle}[]]::{n}" for n in ITEM_NAMES])
    assert str(bp_bundle) not in result.stdout.str()


def test_pyproject_ini_lists_several_checkpoints(pytester, bp_bundle, dfa_bundle):
    pytester.makepyprojecttoml(
        f"""
        [tool.pytest.ini_options]
        fa_checkpoint = ["{bp_bundle}", "{dfa_bundle}"]
        fa_eval_batches = "8"
        """
    )
    result = run(pytester, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [f"fa-protocol[[]{p}[]]::{n}" for p in (bp_bundle, dfa_bundle) for n in ITEM_NAMES]
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("fa_max_growth = big", "*fa_max_growth*'big'*float*"),
        ("fa_eval_batches = 4", "*at least 8*"),
        ("fa_grad_floor = -1", "*must be positive*"),
    ],
)
def test_bad_ini_values_are_usage_errors(pytester, bp_bundle, line, message):
    pytester.makeini(f"[pytest]\nfa_checkpoint = {bp_bundle}\n{line}\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])
    assert_no_internal_traceback(output(result))


def test_relative_ini_checkpoint_is_relative_to_the_ini_file(pytester, bp_bundle, monkeypatch):
    """CI configs name checkpoints relative to the repo; running pytest from a sub-folder
    must still find them (as pytest does for its own path-valued ini keys)."""
    runs = pytester.mkdir("runs")
    (runs / "bp.pt").write_bytes(Path(bp_bundle).read_bytes())
    pytester.makeini("[pytest]\nfa_checkpoint = runs/bp.pt\nfa_frozen_acc = 0\n")
    sub = pytester.mkdir("sub")
    monkeypatch.chdir(sub)
    result = run(pytester, "-k", "residual_growth", "--fa-max-growth=1e9")
    assert "does not exist" not in output(result)
    result.assert_outcomes(passed=1, deselected=3)


# --------------------------------------------------------------------------------------------
# the fa_protocol marker and the fixtures
# --------------------------------------------------------------------------------------------

USER_TESTS = """
    import os
    import pytest
    import torch
    from pytest_fa.assertions import assert_grad_above_floor

    @pytest.mark.fa_protocol
    def test_fixtures(fa_report, fa_model, fa_eval_batches, fa_feedback_matrices, fa_frozen_baseline,
                      fa_checkpoint, fa_thresholds, record_property):
        assert isinstance(fa_model, torch.nn.Module) and not fa_model.training
        record_property("label", fa_report.label)
        record_property("checkpoint", os.path.basename(fa_checkpoint.path))
        record_property("method", fa_checkpoint.method)
        record_property("feedback", [tuple(b.shape) for b in fa_feedback_matrices])
        record_property("batches", [tuple(x.shape) for x, _ in fa_eval_batches])
        record_property("report_batch", (fa_report.num_batches, fa_report.batch_size))
        record_property("frozen", (fa_frozen_baseline.accuracy, fa_report.frozen_acc))
        record_property("thresholds", (fa_thresholds.grad_floor, fa_report.thresholds.grad_floor))

    @pytest.mark.fa_protocol(grad_floor=1.0, b_rule="paper")
    def test_floor_override(fa_report, fa_thresholds, record_property):
        record_property("thresholds", (fa_thresholds.grad_floor, fa_thresholds.max_growth,
                                       fa_report.thresholds.grad_floor))
        assert_grad_above_floor(fa_report)

    @pytest.mark.fa_protocol(bogus=1)
    def test_unknown_kwarg(fa_thresholds):
        pass

    @pytest.mark.fa_protocol(max_growth="big")
    def test_bad_kwarg_value(fa_thresholds):
        pass

    @pytest.mark.fa_protocol
    def test_marked_without_fixtures():
        pass
"""


def test_marker_and_fixtures_once_per_checkpoint(pytester, bp_bundle, dfa_bundle):
    pytester.makepyfile(test_user=USER_TESTS)
    result = run(
        pytester, "test_user.py", f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}",
        "--fa-batch-size=64", "--fa-frozen-acc=0.1",
    )
    reports = item_reports(result)
    bp_name, dfa_name = Path(bp_bundle).name, Path(dfa_bundle).name
    user = {k: v for k, v in reports.items() if k.startswith("test_user.py")}
    assert sorted(user) == sorted(
        [f"test_user.py::test_fixtures[{n}]" for n in (bp_name, dfa_name)]
        + [f"test_user.py::test_floor_override[{n}]" for n in (bp_name, dfa_name)]
        + ["test_user.py::test_unknown_kwarg", "test_user.py::test_bad_kwarg_value",
           "test_user.py::test_marked_without_fixtures"]
    )
    config = load_bundle(dfa_bundle).arch_config
    classes, width, depth, length = config["num_classes"], config["d"], config["depth"], config["input_shape"][0]
    for name, method, feedback in ((bp_name, "bp", []), (dfa_name, "dfa", [(classes, width)] * (depth + 1))):
        rep = user[f"test_user.py::test_fixtures[{name}]"]
        assert rep.passed, rep.longrepr
        props = dict(rep.user_properties)
        assert props["label"] == props["checkpoint"] == name
        assert props["method"] == method
        assert props["feedback"] == feedback
        assert props["batches"] == [(64, length)] * 8
        assert props["report_batch"] == (8, 64)
        assert props["frozen"] == (0.1, 0.1)
        assert props["thresholds"] == (1e-7, 1e-7)

        rep = user[f"test_user.py::test_floor_override[{name}]"]
        assert rep.failed
        assert dict(rep.user_properties)["thresholds"] == (1.0, 50.0, 1.0)
        text = str(rep.longrepr)
        assert "Floor: 1 (grad_floor" in text and f"h_{depth}" in text and registry.get("b").meaning in text

    bad = user["test_user.py::test_unknown_kwarg"]
    assert bad.failed and "unknown threshold(s) ['bogus']" in str(bad.longrepr)
    assert "max_growth" in str(bad.longrepr)  # the known names are listed
    bad = user["test_user.py::test_bad_kwarg_value"]
    assert bad.failed and "setting `max_growth='big'`: a threshold must be a finite number" in str(bad.longrepr)
    assert user["test_user.py::test_marked_without_fixtures"].passed
    # the session thresholds and protocol items are unaffected by the markers
    assert all(reports[i].passed for i in protocol_ids(bp_bundle)[:2])


def test_marked_tests_skip_without_checkpoint(pytester):
    pytester.makepyfile(
        test_user="""
        import pytest

        @pytest.mark.fa_protocol
        def test_uses_report(fa_report):
            pass

        @pytest.mark.fa_protocol(max_growth=10.0)
        def test_plain():
            pass

        def test_unmarked_fixture_user(fa_model):
            pass

        def test_unrelated():
            pass
        """
    )
    result = run(pytester, "-rs")
    result.assert_outcomes(passed=1, skipped=3)
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["SKIPPED*no checkpoint given*--fa-checkpoint=PATH*"])
    assert "pytest-fa protocol =" not in result.stdout.str()


def test_user_test_mutating_fa_model_does_not_change_the_protocol(pytester, bp_bundle, bp_truth):
    """fa_model is function-scoped: what one test does to it must not leak into later tests
    or into the generated protocol items, which run after the user's tests."""
    pytester.makepyfile(
        test_user="""
        import pytest, torch

        @pytest.mark.fa_protocol
        def test_perturb(fa_model):
            with torch.no_grad():
                for block in fa_model.blocks:
                    block.w2.weight.mul_(1e4)
        """
    )
    result = run(pytester, "test_user.py", f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0",
                 "--fa-report-json=out.json")
    (report,) = read_json(pytester)["reports"]
    assert report["diagnostics"]["a"]["value"] == pytest.approx(bp_truth["a"], rel=1e-6)
    assert item_reports(result)[protocol_ids(bp_bundle)[0]].passed == (bp_truth["a"] <= 50)


# --------------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------------


def _all_items_fail_with(result: pytest.RunResult, path, message: str) -> None:
    reports = item_reports(result)
    assert list(reports) == protocol_ids(path)
    for rep in reports.values():
        assert rep.failed
        assert str(rep.longrepr).startswith(f"pytest-fa cannot diagnose {path}:"), rep.longrepr
        assert message in str(rep.longrepr), rep.longrepr
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    assert_no_internal_traceback(output(result))


def test_missing_checkpoint(pytester):
    result = run(pytester, "--fa-checkpoint=missing.pt")
    _all_items_fail_with(result, "missing.pt", "does not exist")
    # the fixtures fail the same way, in one paragraph
    pytester.makepyfile(test_user="def test_it(fa_report):\n    pass\n")
    result = run(pytester, "test_user.py", "--fa-checkpoint=missing.pt", "-k", "test_it")
    (rep,) = item_reports(result).values()
    assert rep.failed and rep.when == "setup"
    assert "pytest-fa: checkpoint missing.pt does not exist" in str(rep.longrepr)
    assert_no_internal_traceback(output(result))


def test_unsafe_pickle_is_refused_without_running_it(pytester):
    marker = pytester.path / "code-ran"

    class Payload:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    torch.save({"weights": torch.zeros(2), "evil": Payload()}, pytester.path / "evil.pt")
    result = run(pytester, "--fa-checkpoint=evil.pt")
    _all_items_fail_with(result, "evil.pt", "unsafe pickle")
    assert not marker.exists()


def test_corrupt_file_and_directory(pytester):
    (pytester.path / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    pytester.mkdir("folder.pt")
    result = run(pytester, "--fa-checkpoint=broken.pt", "--fa-checkpoint=folder.pt")
    reports = item_reports(result)
    assert all(reports[i].failed and "corrupt or truncated" in str(reports[i].longrepr) for i in protocol_ids("broken.pt"))
    assert all(reports[i].failed and "is a directory" in str(reports[i].longrepr) for i in protocol_ids("folder.pt"))
    assert_no_internal_traceback(output(result))


def test_plain_state_dict_without_model_factory(pytester, bp_bundle):
    torch.save(load_bundle(bp_bundle).state_dict, pytester.path / "plain.pt")
    result = run(pytester, "--fa-checkpoint=plain.pt")
    _all_items_fail_with(result, "plain.pt", "--fa-model=package.module:build")


def test_data_mismatch(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-data=fashion-mnist")
    _all_items_fail_with(result, bp_bundle, "trained on 'mnist1d' but --fa-data='fashion-mnist'")


def test_too_few_test_samples_for_the_eval_batches(pytester, bp_bundle):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-batch-size=1000", "--fa-frozen-acc=0")
    _all_items_fail_with(result, bp_bundle, "has 1200 test samples but 8 batches of 1000 need 8000")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fa-eval-batches=4"], "*--fa-eval-batches=4*needs at least 8*"),
        (["--fa-max-growth=abc"], "*--fa-max-growth*invalid float value*'abc'*"),
        (["--fa-grad-floor=0"], "*must be positive*"),
        (["--fa-max-growth=1e308"], "*--fa-max-growth=1e+308: (a)'s growth*strictly inside (4.12e-84, 2.43e+83)*"),
        (["--fa-frozen-margin-pp=-100"], "*--fa-frozen-margin-pp=-100: (d)'s margin*strictly inside (-100, 100)*"),
        (["--fa-batch-size=1"], "*--fa-batch-size=1: an eval batch needs at least 2 samples*"),
        (["--fa-device=tpu"], "*--fa-device='tpu'*auto, cpu or cuda*"),
        (["--fa-eval-batches=many"], "*--fa-eval-batches*invalid int value*"),
    ],
    ids=["eval-batches", "non-number", "floor-zero", "growth-beyond-float32", "margin-at-the-end", "batch-size",
         "device-name", "non-int"],
)
def test_bad_options_are_usage_errors(pytester, bp_bundle, args, message):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, output(result)[-3000:]
    result.stderr.fnmatch_lines([message])
    assert_no_internal_traceback(output(result))


def test_frozen_accuracy_out_of_range_is_a_clear_error(pytester, bp_bundle):
    """An accuracy given in percent is a typo the plugin must name, not a traceback from deep
    inside the report code."""
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=65")
    text = output(result)
    assert result.ret != pytest.ExitCode.OK
    assert "--fa-frozen-acc" in text and "[0, 1]" in text, text[-3000:]
    assert_no_internal_traceback(text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_cuda_without_gpu_is_a_usage_error(pytester, bp_bundle):
    result = pytester.runpytest("-p", "no:cacheprovider", f"--fa-checkpoint={bp_bundle}", "--fa-device=cuda")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-device='cuda': torch sees no CUDA GPU*use cpu or auto*"])
    assert_no_internal_traceback(output(result))


# --------------------------------------------------------------------------------------------
# a plain state dict with --fa-model
# --------------------------------------------------------------------------------------------

# A plain state dict records no data config, so the runner calls load_dataset('mnist1d') with
# its defaults: 60 000 samples, about 40 s to generate on 2 cores. This conftest shrinks that to
# the 6 000-sample set the session fixtures already generated (same generator, same seed).
SMALL_MNIST1D_CONFTEST = """
    import functools
    import pytest_fa.protocol as protocol

    _original = protocol.load_dataset

    def pytest_configure(config):
        protocol.load_dataset = functools.partial(_original, num_samples=6000)

    def pytest_unconfigure(config):
        protocol.load_dataset = _original
"""


@pytest.fixture
def plain_checkpoint(pytester, bp_bundle, small_data):
    bundle = load_bundle(bp_bundle)
    assert bundle.data == small_data.spec  # the conftest above rebuilds exactly this data
    torch.save(bundle.state_dict, pytester.path / "plain.pt")
    config = {k: v for k, v in bundle.arch_config.items()}
    pytester.makepyfile(
        mymodel=f"""
        from pytest_fa.models import ResMLP

        def build():
            return ResMLP(**{config!r})
        """
    )
    pytester.makeconftest(SMALL_MNIST1D_CONFTEST)
    pytester.syspathinsert()
    return "plain.pt"


def test_plain_state_dict_with_model_factory(pytester, plain_checkpoint, bp_truth):
    base = (f"--fa-checkpoint={plain_checkpoint}", "--fa-model=mymodel:build", "--fa-data=mnist1d",
            "--fa-report-json=out.json")
    result = run(pytester, *base)
    reports = item_reports(result)
    ids = protocol_ids(plain_checkpoint)
    assert [reports[i].passed for i in ids[:3]] == [bp_truth["a"] <= 50, bp_truth["b"] >= 1e-7, bp_truth["c"] <= 0.3]
    frozen_item = reports[ids[3]]
    assert frozen_item.failed and "not evaluated" in str(frozen_item.longrepr)
    assert "--fa-frozen-acc" in str(frozen_item.longrepr)
    (report,) = read_json(pytester)["reports"]
    assert report["gamma"]["status"].startswith("unavailable")
    assert all(r["gamma"] is None for r in report["layers"])
    assert report["verdict"] == "incomplete: (d) not evaluated"
    assert report["diagnostics"]["d"]["fires"] is None and report["diagnostics"]["d"]["value"] is None
    # same weights and data as the bundle: same numbers
    assert report["diagnostics"]["a"]["value"] == pytest.approx(bp_truth["a"], rel=1e-6)
    assert report["diagnostics"]["b"]["value"] == pytest.approx(bp_truth["b"], rel=1e-6)
    assert report["accuracy"]["headline"] == pytest.approx(bp_truth["headline"], abs=1e-12)
    result.stdout.fnmatch_lines(["Γ: unavailable*", "VERDICT: incomplete: (d) not evaluated"])

    result = run(pytester, *base, "--fa-frozen-acc=0.5", "-k", "frozen_margin")
    (rep,) = item_reports(result).values()
    (report,) = read_json(pytester)["reports"]
    margin = 100 * (bp_truth["headline"] - 0.5)
    assert report["diagnostics"]["d"]["value"] == pytest.approx(margin, abs=1e-9)
    assert rep.passed == (margin >= 2.0)
    assert "not evaluated" not in str(rep.longrepr or "")

    result = run(pytester, *base, "--fa-frozen-epochs=1", "-k", "frozen_margin")
    (report,) = read_json(pytester)["reports"]
    assert report["diagnostics"]["d"]["fires"] is not None
    assert "trained now" in report["context"]["frozen_baseline"]
    assert "1 epochs" in report["context"]["frozen_baseline"]
    # nothing records the model's budget: the session says so beside the result
    assert "FABudgetWarning: the frozen-blocks baseline of plain.pt is trained for 1 epochs" in output(result)
    # under pytest the warning names the option, not the library's setting
    assert "--fa-frozen-acc=ACC" in output(result) and "setting `frozen_acc" not in output(result)


def test_frozen_epochs_below_one_is_a_clear_error(pytester, plain_checkpoint):
    result = run(pytester, f"--fa-checkpoint={plain_checkpoint}", "--fa-model=mymodel:build",
                 "--fa-frozen-epochs=0")
    text = output(result)
    assert result.ret != pytest.ExitCode.OK
    assert "--fa-frozen-epochs" in text, text[-3000:]
    assert_no_internal_traceback(text)


def test_model_factory_that_cannot_be_imported(pytester, plain_checkpoint):
    result = run(pytester, f"--fa-checkpoint={plain_checkpoint}", "--fa-model=no_such_module:build")
    _all_items_fail_with(result, plain_checkpoint, "cannot import 'no_such_module'")


def test_a_users_own_method_gets_gamma_through_fa_credit(pytester, dfa_bundle, small_data):
    """A bundle whose method pytest-fa does not know is diagnosed with the user's credit factory."""
    from pytest_fa.training.checkpoint import load_bundle, save_bundle

    bundle = load_bundle(dfa_bundle)
    bundle.method, bundle.method_config = "my_rule", {"scale": 2.0}
    path = save_bundle(pytester.path / "mine.pt", bundle)
    pytester.makepyfile(my_credit="""
        from pytest_fa.core.credit import DFACredit

        def make_credit(model, checkpoint):
            assert checkpoint.method == "my_rule" and checkpoint.bundle.method_config == {"scale": 2.0}
            return DFACredit(checkpoint.state.feedback)
    """)
    pytester.syspathinsert()
    report = pytester.path / "r.json"
    result = pytester.runpytest("-p", "no:cacheprovider", f"--fa-checkpoint={path}", "--fa-credit=my_credit:make_credit",
                                f"--fa-report-json={report}", "--fa-frozen-acc=0.1")
    assert result.ret in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED), result.stdout.str()
    payload = json.loads(report.read_text())["reports"][0]
    assert payload["gamma"]["status"] == "computed"
    assert all(row["gamma"] is not None for row in payload["layers"])
    unknown = pytester.runpytest("-p", "no:cacheprovider", f"--fa-checkpoint={path}")
    unknown.stdout.fnmatch_lines(["*unknown method 'my_rule'*--fa-credit*"])


def test_factories_in_the_rootdir_import_although_it_is_not_on_sys_path(pytester, dfa_bundle):
    """``pytest`` run from a repository root leaves the root off sys.path: the ``--fa-model``
    and ``--fa-credit`` modules are looked up in pytest's rootdir."""
    import uuid

    from pytest_fa.training.checkpoint import save_bundle

    bundle = load_bundle(dfa_bundle)
    config, bundle.arch, bundle.arch_config = bundle.arch_config, "custom", {}
    save_bundle(pytester.path / "mine.pt", bundle)
    name = f"fa_rooted_{uuid.uuid4().hex[:10]}"
    pytester.makepyfile(**{name: f"""
        from pytest_fa.core.credit import DFACredit
        from pytest_fa.models import ResMLP

        def build():
            return ResMLP(**{config!r})

        def make_credit(model, checkpoint):
            return DFACredit(checkpoint.state.feedback)
    """})
    pytester.makeini("[pytest]\n")
    assert str(pytester.path) not in sys.path
    try:
        result = run(pytester, "--fa-checkpoint=mine.pt", f"--fa-model={name}:build", f"--fa-credit={name}:make_credit",
                     "--fa-frozen-acc=0.1", "--fa-report-json=r.json")
    finally:
        sys.modules.pop(name, None)
    assert "cannot import" not in output(result), output(result)[-3000:]
    assert read_json(pytester, "r.json")["reports"][0]["gamma"]["status"] == "computed"


def test_credit_map_lines_of_the_ini_file_are_kept_as_written(pytester):
    from pytest_fa.plugin._options import session_settings

    pytester.makeini("[pytest]\nfa_credit_map =\n    biotorch_* = mymethods:make_credit\n    runs/fa_*.pt = other:make\n"
                     "fa_compare = old.json\nfa_compare_fail = headline_acc:1pp\n")
    settings = session_settings(pytester.parseconfig())
    assert settings.credit_map == ("biotorch_* = mymethods:make_credit", "runs/fa_*.pt = other:make")
    assert settings.compare_fail == ("headline_acc:1pp",)  # a repeated option that is no path stays as written
    with pytest.raises(pytest.UsageError, match=r"--fa-credit-map='biotorch_\*': write each line as PATTERN = "):
        session_settings(pytester.parseconfig("--fa-credit-map=biotorch_*"))


@pytest.mark.parametrize(("args", "named"), [
    (["--fa-max-growth=nan"], "--fa-max-growth=nan: a threshold must be a finite number"),
    (["--fa-b-rule=x"], "--fa-b-rule='x': use one of decomposed, paper"),
    (["--fa-drift-ceiling=1"], "--fa-drift-ceiling=1: (c)'s mean cosine lies in"),
    (["--fa-grad-floor=0"], "--fa-grad-floor=0: grad_floor must be positive"),
    (["--fa-floor-batch-size=-2"], "--fa-floor-batch-size=-2: floor_batch_size must be positive"),
])
def test_a_bad_threshold_option_is_named_as_its_option(pytester, args, named):
    """A threshold's usage error names the option given, as every other setting's does."""
    from pytest_fa.plugin._options import session_settings

    with pytest.raises(pytest.UsageError) as info:
        session_settings(pytester.parseconfig(*args))
    assert named in str(info.value) and "setting `" not in str(info.value)


def test_model_factory_that_raises_is_reported_as_the_users_error(pytester, plain_checkpoint):
    pytester.makepyfile(raising_factory="def build():\n    raise ValueError('width must be even')\n")
    pytester.syspathinsert()
    result = run(pytester, f"--fa-checkpoint={plain_checkpoint}", "--fa-model=raising_factory:build",
                 "--fa-frozen-acc=0")
    _all_items_fail_with(result, plain_checkpoint, "your model factory `raising_factory:build` (--fa-model) raised ValueError: width must be even")


@pytest.mark.parametrize("workers", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_a_checkpoint_that_is_a_symlink_loop_is_a_usage_error(pytester, workers):
    if workers:
        pytest.importorskip("xdist")
    os.symlink("loop.pt", pytester.path / "loop.pt")
    result = pytester.runpytest_subprocess("--fa-device=cpu", "-p", "no:cacheprovider", "--fa-checkpoint=loop.pt", *workers)
    text = output(result)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--fa-checkpoint=loop.pt is a symlink loop; give the path of a real file or folder" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text


def test_a_credit_module_that_cannot_be_imported_names_the_credit_option(pytester, bp_bundle):
    result = pytester.runpytest_subprocess("--fa-device=cpu", "-p", "no:cacheprovider", f"--fa-checkpoint={bp_bundle}",
                                           "--fa-credit=fa_no_such_credit_module:make", "--fa-frozen-acc=0.1")
    text = output(result)
    assert "--fa-credit: cannot import 'fa_no_such_credit_module'" in text and "--fa-model" not in text
    assert "Traceback" not in text and "INTERNALERROR" not in text


def test_model_factory_that_exits_is_reported_as_the_users_error(pytester, plain_checkpoint):
    pytester.makepyfile(exiting_factory="import sys\ndef build():\n    sys.exit('unsupported width')\n")
    result = pytester.runpytest_subprocess("--fa-device=cpu", "-p", "no:cacheprovider", f"--fa-checkpoint={plain_checkpoint}",
                                           "--fa-model=exiting_factory:build", "--fa-frozen-acc=0")
    text = output(result)
    assert "your model factory `exiting_factory:build` (--fa-model) raised SystemExit: unsupported width" in text
    assert "Traceback" not in text and "INTERNALERROR" not in text
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_an_unwritable_report_json_is_a_usage_error_before_anything_runs(pytester, bp_bundle, where):
    target = pytester.path if where == "folder" else Path(bp_bundle) / "report.json"
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0", f"--fa-report-json={target}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-report-json=*is a folder*" if where == "folder" else "*cannot write there*"])
    assert "Traceback" not in result.stderr.str()


def test_one_checkpoint_named_twice_is_diagnosed_once(pytester, bp_bundle):
    relative = os.path.relpath(bp_bundle, pytester.path)
    result = run(pytester, f"--fa-checkpoint={relative}", f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0",
                 "--fa-report-json=out.json")
    result.assert_outcomes(passed=4)
    assert len(read_json(pytester)["reports"]) == 1


@pytest.mark.parametrize("ceiling", ["-1", "1", "1.5"])
def test_a_drift_ceiling_at_or_beyond_the_ends_is_a_usage_error(pytester, bp_bundle, ceiling):
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-drift-ceiling={ceiling}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--fa-drift-ceiling=*strictly inside*"])


def test_an_unreadable_checkpoint_fails_before_any_other_is_diagnosed(pytester, bp_bundle):
    (pytester.path / "corrupt.pt").write_bytes(Path(bp_bundle).read_bytes()[:1000])
    result = run(pytester, f"--fa-checkpoint={bp_bundle}", "--fa-checkpoint=corrupt.pt", "--fa-checkpoint=missing.pt",
                 "--fa-frozen-acc=0")
    order = [rep.nodeid for rep in result.reprec.getreports("pytest_runtest_logreport") if rep.when == "call"]
    assert [n.split("::")[0] for n in order[:8]] == ["fa-protocol[corrupt.pt]"] * 4 + ["fa-protocol[missing.pt]"] * 4
    reports = item_reports(result)
    assert all("corrupt or truncated" in str(reports[i].longrepr) for i in protocol_ids("corrupt.pt"))
    assert all("does not exist" in str(reports[i].longrepr) for i in protocol_ids("missing.pt"))
    assert all(reports[i].passed for i in protocol_ids(bp_bundle))


def test_report_md_fills_the_template_for_every_checkpoint(pytester, bp_bundle, dfa_bundle):
    run(pytester, f"--fa-checkpoint={bp_bundle}", f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0.1",
                 "--fa-report-md=out/report.md", "--fa-report-json=out.json")
    text = (pytester.path / "out" / "report.md").read_text()
    reports = read_json(pytester)["reports"]
    dfa_name = Path(dfa_bundle).name
    for report in reports:
        label = report["label"]
        assert f"| {label} | {report['accuracy']['headline']:.4f} | 0.1000 | {report['verdict']} |" in text
        assert f"## {label} — {report['verdict']}" in text
    section = text.split(f"## {dfa_name}")[1]
    for key, name in (("a", "residual growth"), ("b", "gradient floor"), ("c", "direction stability"),
                      ("d", "frozen-blocks margin")):
        assert f"| ({key}) | {name} |" in section
    assert "(fires > 50×)" in section and "(fires < 1e-07)" in section and "gain_floor 0.001" in section
    layer_rows = [line for line in section.split("### Per layer")[1].split("### Verdict")[0].splitlines()
                  if line.startswith("| h_")]
    assert len(layer_rows) == len(reports[1]["layers"])
    assert "| frozen-blocks baseline | frozen-blocks baseline 0.1000 (given, not trained" in section


def test_report_md_marks_undefined_and_unavailable_gamma(pytester, dfa_bundle, plain_checkpoint):
    # a floor of 1 with a gain floor of 10 puts the DFA bundle in Mode 1: its deep Γ rows are undefined
    run(pytester, f"--fa-checkpoint={dfa_bundle}", "--fa-frozen-acc=0", "--fa-grad-floor=1", "--fa-gain-floor=10",
        "--fa-report-md=mode1.md")
    text = (pytester.path / "mode1.md").read_text()
    assert "*undefined* (‖g_4‖ below the floor)" in text
    assert "What to do: quote per-layer Γ only from checkpoints before (b) fires" in text
    run(pytester, f"--fa-checkpoint={plain_checkpoint}", "--fa-frozen-acc=0", "--fa-model=mymodel:build",
        "--fa-data=mnist1d", "--fa-report-md=plain.md")
    plain = (pytester.path / "plain.md").read_text()
    assert "*unavailable* (a plain state dict carries no method" in plain


@pytest.fixture(scope="module")
def dfa_other_seed(small_data, dfa_bundle, tmp_path_factory):
    """The small DFA bundle's configuration, trained with another seed."""
    from pytest_fa.training.checkpoint import save_bundle
    from pytest_fa.training.trainer import train

    reference = load_bundle(dfa_bundle)
    arch = {k: v for k, v in reference.arch_config.items() if k not in ("input_shape", "num_classes")}
    result = train(small_data, "dfa", arch_config=arch, epochs=reference.epochs, seed=7, device="cpu")
    return save_bundle(tmp_path_factory.mktemp("seed7") / "dfa_s7.pt", result.bundle)


def test_seeds_of_one_configuration_get_a_mean_sd_row_and_a_verdict_count(pytester, bp_bundle, dfa_bundle, dfa_other_seed):
    result = run(pytester, f"--fa-checkpoint={dfa_bundle}", f"--fa-checkpoint={dfa_other_seed}",
                 f"--fa-checkpoint={bp_bundle}", "--fa-frozen-acc=0.1", "--fa-report-json=out.json",
                 "--fa-report-md=out.md")
    payload = read_json(pytester)
    (group,) = payload["seed_groups"]  # BP has one seed: no group
    assert sorted(group["seeds"]) == [7, 42] and group["configuration"]["method"] == "dfa"
    dfa_reports = [r for r in payload["reports"] if r["label"] in group["checkpoints"]]
    accs = [r["accuracy"]["headline"] for r in dfa_reports]
    stats = group["statistics"]["headline_acc"]
    assert stats["n"] == 2 and stats["mean"] == pytest.approx(sum(accs) / 2)
    assert stats["sd"] == pytest.approx(abs(accs[0] - accs[1]) / 2**0.5)
    assert sum(group["verdicts"].values()) == 2
    assert group["verdicts"] == {v: [r["verdict"] for r in dfa_reports].count(v) for v in group["verdicts"]}
    result.stdout.fnmatch_lines(["seeds of one configuration (mean ± sd):", "*dfa resmlp 2 ep*42, 7*±*"])
    assert "| dfa resmlp 2 ep | 42, 7 |" in (pytester.path / "out.md").read_text()


HYPOTHESIS_PROBE = """
import sys

def pytest_unconfigure(config):
    print("hypothesis imported:", "hypothesis" in sys.modules)
"""


def test_a_session_that_never_used_hypothesis_does_not_import_it_for_the_summary(pytester):
    pytester.makeconftest(HYPOTHESIS_PROBE)
    pytester.makepyfile(test_plain="def test_plain():\n    assert True\n")
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["hypothesis imported: False"])
    # without pytest-fa, hypothesis's own plugin imports it in the terminal summary
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:fa")
    result.stdout.fnmatch_lines(["hypothesis imported: True"])


def test_a_session_that_used_hypothesis_keeps_its_summary(pytester):
    pytester.makeconftest(HYPOTHESIS_PROBE)
    pytester.makepyfile(test_given=(
        "from hypothesis import given, strategies as st\n\n"
        "@given(st.integers())\ndef test_given(x):\n    assert x == x\n"
    ))
    result = pytester.runpytest_subprocess("-p", "no:randomly", "-p", "no:cacheprovider", "--hypothesis-show-statistics")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*Hypothesis Statistics*", "*test_given*", "hypothesis imported: True"])
