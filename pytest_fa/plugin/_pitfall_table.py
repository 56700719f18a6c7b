"""The terminal table of a ``--fa-pitfalls`` session: per pitfall, the suite's outcome and
whether the checkpoint under test is exposed."""

from __future__ import annotations

from pytest_fa.core.render import text_table
from pytest_fa.errors import setting
from pytest_fa.pitfalls import PITFALLS


def pitfall_table(outcomes: dict[str, dict[str, list[str]]]) -> str:
    """Per pitfall: whether the suite pins it, and whether the user's checkpoint is exposed."""
    rows = [("pitfall", "", "suite", "your checkpoint")]
    for p in PITFALLS:
        entry = outcomes.get(p.id)
        if entry is None:
            continue
        rows.append((p.id, p.title.replace("`", ""), _suite_state(entry["suite"]), _checkpoint_state(entry["checkpoint"])))
    return text_table(rows)


def _suite_state(outcomes: list[str]) -> str:
    if not outcomes:
        return "—"
    failed = outcomes.count("failed")
    return f"FAILED ({failed}/{len(outcomes)})" if failed else f"pinned ({len(outcomes)} tests)"


def _checkpoint_state(outcomes: list[str]) -> str:
    ran = [o for o in outcomes if o != "skipped"]
    if not ran:
        return f"not checked (no {setting('checkpoint')})" if outcomes else "—"
    return "EXPOSED" if "failed" in ran else "not exposed"
