"""Which block learned, per checkpoint: Γ_l, the accuracy drop with each block removed and
reset, the W-vs-B angle where defined, and (d)'s margin, as one Markdown table.

    python examples/which_block.py report.json [more.json ...]

The reports are ``--fa-report-json`` files of ``pytest --fa-checkpoint=...`` runs; each row is
one state ``h_l`` of one checkpoint (the drops belong to the block writing it).
"""

from __future__ import annotations

import json
import sys

from pytest_fa.core.render import fmt


def rows(report: dict) -> list[list[str]]:
    margin = report["diagnostics"]["d"]["value"]
    out = []
    for layer in report["layers"]:
        cells = []
        for value, status, spec in ((layer["gamma"], layer["gamma_status"], "+.3f"),
                                    (layer.get("removed_drop_pp"), layer.get("removed_status", ""), "+.2f"),
                                    (layer.get("reset_drop_pp"), layer.get("reset_status", ""), "+.2f"),
                                    (layer.get("wb_angle_deg"), layer.get("wb_status", ""), ".1f")):
            cells.append(fmt(value, spec) if value is not None else (status.partition(":")[0] or "—"))
        out.append([report["label"], f"h_{layer['index']}", *cells, fmt(margin, "+.1f")])
    return out


def main(paths: list[str]) -> str:
    header = ["checkpoint", "state", "Γ_l", "drop removed (pp)", "drop reset (pp)", "∠(W,B_l) (°)", "(d) margin (pp)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            for report in json.load(handle)["reports"]:
                lines += ["| " + " | ".join(row) + " |" for row in rows(report)]
    return "\n".join(lines)


if __name__ == "__main__":
    print(main(sys.argv[1:]))
