"""The terminal table of a ``--fa-pitfalls`` session: per pitfall, the suite's outcome and
whether the checkpoint under test is exposed."""

from __future__ import annotations

from pytest_fa.core.render import text_table
from pytest_fa.errors import setting
from pytest_fa.pitfalls import PITFALLS


def pitfall_table(outcomes: dict[str, dict[str, list[str]]]) -> str:
    """Per pitfall: whether the suite pins it, and whether the user's checkpoint is exposed."""
    rows = [(p.id, p.title.replace("`", ""), _suite_state(outcomes[p.id]["suite"]),
             _checkpoint_state(outcomes[p.id]["checkpoint"])) for p in PITFALLS if p.id in outcomes]
    return text_table([("pitfall", "", "suite", "your checkpoint"), *rows])


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
