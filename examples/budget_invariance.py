"""The protocol's verdict on bundles trained at different budgets, under both (b) rules.

    fa-train --methods bp --seeds 42 123 456 --epochs 20 --out runs/budget/e20
    python examples/budget_invariance.py runs/budget/*/*.pt --json runs/budget/table.json

For every bundle: the headline and matched frozen-baseline accuracy, (a), the (b) reference
``‖g_L‖`` restated at batch 128 with its decomposition ``gain × median ‖e‖ / B``, the (b)
sub-mode, and the verdict under ``b_rule="decomposed"`` (the default) and ``"paper"``. The
frozen baselines are trained once per budget and cached as ``pytest --fa-checkpoint`` does.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pytest_fa.core.report import diagnose
from pytest_fa.core.thresholds import DiagnosticThresholds
from pytest_fa.protocol import ProtocolRunner, ProtocolSettings

COLUMNS = (
    "bundle", "epochs", "acc", "frozen", "frozen gain_L", "(a) growth", "‖g_L‖ @128", "gain_L", "‖e‖", "(b) sub-mode",
    "deep Γ", "verdict (decomposed)", "verdict (paper)",
)


def row(runner: ProtocolRunner, path: str) -> dict:
    """One bundle's numbers under both rules (the paper's numbers are the same; only (b) differs)."""
    decomposed = runner.report(path, DiagnosticThresholds())
    paper = runner.report(path, DiagnosticThresholds(b_rule="paper"))
    b = decomposed.diagnostics["b"]
    context = decomposed.context
    planned = runner.run(path).bundle.metrics.get("planned_epochs")
    frozen = runner.frozen_baseline(path).model
    frozen_gain = None
    if frozen is not None:  # the control's own backward gain, on the same eval batches
        control = diagnose(frozen, runner.eval_batches(path), device=runner.device, null_draws=0)
        frozen_gain = control.diagnostics["b"].components.get("gain")
    return {
        "bundle": f"{context['method']} s{context['seed']}",
        "path": path,
        "epochs": context["epochs"],
        "planned_epochs": planned,
        "acc": decomposed.headline_acc,
        "frozen": decomposed.frozen_acc,
        "frozen_gain": frozen_gain,
        "growth": decomposed.diagnostics["a"].value,
        "g_ref": b.value,
        "gain": b.components.get("gain"),
        "error_norm": b.components.get("error_norm"),
        "submode": b.submode,
        "deep_gamma": decomposed.gamma_mean(1),
        "verdict": decomposed.verdict,
        "verdict_paper": paper.verdict,
        "paper_b_value": paper.diagnostics["b"].value,
    }


def _fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        epochs = f"{r['epochs']}" + (f" of {r['planned_epochs']}" if r["planned_epochs"] not in (None, r["epochs"]) else "")
        cells = (
            r["bundle"], epochs, _fmt(r["acc"], ".4f"), _fmt(r["frozen"], ".4f"), _fmt(r["frozen_gain"], ".3g"), _fmt(r["growth"], ".3g") + "×",
            _fmt(r["g_ref"], ".3g"), _fmt(r["gain"], ".3g"), _fmt(r["error_norm"], ".3g"), r["submode"],
            _fmt(r["deep_gamma"], "+.3f"), r["verdict"], r["verdict_paper"],
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", help="bundle files (pytest-fa .pt)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-root", default=None, help="folder holding the data set files")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    runner = ProtocolRunner(ProtocolSettings(device=args.device, data_root=args.data_root))
    rows = []
    for path in args.bundles:
        rows.append(row(runner, path))
        print(f"{path}: {rows[-1]['verdict']}  (paper rule: {rows[-1]['verdict_paper']})", file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
