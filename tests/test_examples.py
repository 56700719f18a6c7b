"""Every example runs end to end at smoke size and writes its table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow  # smoke runs of the example studies: the slow tier


@pytest.fixture(autouse=True)
def examples_importable(monkeypatch):
    """The example scripts import their shared ``studies`` module from their own folder."""
    monkeypatch.syspath_prepend(str(EXAMPLES))


def example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path_factory.mktemp("studies")
    torch.set_num_threads(threads)


def table_rows(path: Path) -> list[list[str]]:
    lines = [line for line in path.read_text().splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]


def test_audit_table_has_every_method_and_both_verdicts(out):
    assert example("audit").main(["--smoke", "--out", str(out)]) == 0
    rows = table_rows(out / "audit.md")
    assert [r[0] for r in rows] == ["bp", "ep", "dfa", "state_bridge", "credit_bridge"]
    bp = rows[0]
    assert bp[-1] == "trustworthy" and " ± " in bp[1]
    assert (out / "audit.json").exists() and "Command: `python examples/audit.py --smoke" in (out / "audit.md").read_text()


def test_decision_utility_counts_walk_backs_per_strategy(out):
    assert example("decision_utility").main(["--smoke", "--out", str(out)]) == 0
    rows = table_rows(out / "decision_utility.md")
    assert [r[0] for r in rows] == ["S0", "S1", "S2", "S3", "S4", "S5", "S_full"]
    full = rows[-1]
    assert full[2].endswith("/5") and "bp" not in full[3].split(", ")


def test_threshold_sensitivity_lists_each_scaled_threshold(out):
    assert example("threshold_sensitivity").main(["--smoke", "--out", str(out)]) == 0
    rows = table_rows(out / "threshold_sensitivity.md")
    assert any(r[0] == "(a) max_growth" and r[1].startswith("×1 = 50") for r in rows)
    assert any(r[0] == "(b) grad_floor" for r in rows) and any(r[0] == "(d) frozen_margin_pp" for r in rows)


def test_temporal_replay_has_a_row_per_run(out):
    assert example("temporal_replay").main(["--smoke", "--out", str(out)]) == 0
    assert len(table_rows(out / "temporal_replay.md")) == 10


def test_penalty_sweep_and_null_calibration(out):
    assert example("penalty_sweep").main(["--smoke", "--out", str(out), "--lambdas", "0", "0.01"]) == 0
    rows = table_rows(out / "penalty_sweep.md")
    assert [(r[0], r[1]) for r in rows] == [("dfa", "0"), ("dfa", "0.01"), ("bp", "0"), ("bp", "0.01")]
    assert example("null_calibration").main(["--smoke", "--out", str(out), "--draws", "4"]) == 0
    text = (out / "null_calibration.md").read_text()
    assert "DFA, λ = 0" in text and "DFA, λ = 0.01" in text and "n = 4" in text


def test_cross_architecture_covers_four_architectures(out):
    assert example("cross_architecture").main(["--smoke", "--out", str(out)]) == 0
    rows = table_rows(out / "cross_architecture.md")
    assert {r[0]: r[1] for r in rows} == {"resmlp": "yes", "vit-mini": "yes", "smallcnn": "no", "studentnet": "no"}


def test_budget_invariance_gives_both_rules_for_each_bundle(bp_bundle, dfa_bundle, tmp_path, capsys):
    json_path = tmp_path / "rows.json"
    assert example("budget_invariance").main([str(bp_bundle), str(dfa_bundle), "--device", "cpu", "--json", str(json_path)]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    header, rows = lines[0], [[c.strip() for c in line.strip("|").split("|")] for line in lines[1:]]
    assert "verdict (paper)" in header and "gain_L" in header
    assert [r[0] for r in rows] == ["bp s42", "dfa s42"]
    import json

    saved = json.loads(json_path.read_text())
    assert all(r["gain"] > 0 and r["error_norm"] > 0 and r["frozen"] is not None for r in saved)
    assert saved[0]["verdict"] == "trustworthy"


def test_float32_reference_bins_every_sample(bp_bundle, capsys):
    assert example("float32_reference").main([str(bp_bundle)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1024 samples from 1 bundles")
    rows = [line for line in out.splitlines() if line.startswith("| [")]
    assert sum(int(r.split("|")[2]) for r in rows) == 1024


def test_ep_relaxation_compares_the_four_variants(out, capsys):
    assert example("ep_relaxation").main(["--smoke"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "epoch" not in line]
    assert {tuple(c.strip() for c in r.strip("|").split("|")[:2]) for r in rows} == {
        ("displacement", "fixed step"), ("displacement", "backtracking"),
        ("prediction-error", "fixed step"), ("prediction-error", "backtracking"),
    }
