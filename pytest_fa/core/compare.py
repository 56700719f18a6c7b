"""A run against a saved JSON report (``--fa-compare``), as pytest-benchmark's compare: a checkpoint
fails when a diagnostic crossed its threshold or is no longer evaluated, or a figure moved beyond its
tolerance (:mod:`pytest_fa.core.tolerance`) or became undefined; other changes are only shown. No torch."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_fa.core import registry
from pytest_fa.core.render import text_table
from pytest_fa.core.report_json import checkpoint
from pytest_fa.core.tolerance import Tolerance, figures, fmt, fmt_change, get, number


def match_reports(saved: Sequence[Mapping], run: Sequence[Mapping]) -> list[tuple[Mapping, Mapping | None]]:
    """Each report of this ``run`` with its ``saved`` one (None: absent): by ``label`` when it names
    one report on each side (the checkpoint may have moved), else by ``context.checkpoint``."""
    pairs = []
    for new in run:
        label = new.get("label")
        candidates = [old for old in saved if old.get("label") == label]
        if len(candidates) > 1 or sum(r.get("label") == label for r in run) > 1:
            candidates = [old for old in candidates if checkpoint(old) == checkpoint(new)]
        pairs.append((new, candidates[0] if candidates else None))
    return pairs


class Kind(enum.Enum):
    """A kind of change: its status in the table, whether it fails the comparison, its message."""

    CROSSED = "crossed", True, "{figure} ({diagnostic}) crossed its threshold, now fires: {values}{rule}"
    NOT_EVALUATED = "not evaluated", True, "{figure} ({diagnostic}) was evaluated, now is not: {values}{rule}"
    BEYOND = "beyond tolerance", True, "{figure} moved beyond its tolerance {tolerance}: {values}; allowed: {allowed}"
    UNDEFINED = "undefined", True, "{figure} became undefined: {values}; a tolerance ({tolerance}) needs a number"
    LAYER_COUNT = "layer count", True, (
        "{figure}: the layer count changed, {old} → {new}; per-layer Γ cannot be compared")
    CLEARED = "cleared", False, "{figure} ({diagnostic}) no longer fires: {values}{rule}"
    NOW_EVALUATED = "now evaluated", False, "{figure} ({diagnostic}) now evaluated: {values}{rule}"
    VERDICT = "verdict", False, "verdict: {old!r} → {new!r}"
    THRESHOLD = "threshold", False, "{figure} changed: {values}"

    def __init__(self, label: str, fails: bool, message: str) -> None:
        self.label, self.fails, self.message = label, fails, message


@dataclass(frozen=True)
class Change:
    """One difference, saved (``old``) against this run (``new``); ``threshold``: this run's, for a
    crossing; ``tolerance``: the one broken."""

    figure: str
    old: Any
    new: Any
    kind: Kind
    threshold: float | None = None
    tolerance: Tolerance | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line as in an assertion message: what changed, old → new (Δ), and the rule."""
        change = fmt_change(self.figure, self.old, self.new)
        values = f"{fmt(self.figure, self.old)} → {fmt(self.figure, self.new)}" + (
            f" (Δ {change})" if change not in ("", "—") else "")
        key = getattr(figures().get(self.figure), "diagnostic", None)
        diagnostic = registry.get(key) if key else None
        text = self.kind.message.format(
            figure=self.figure, old=self.old, new=self.new, values=values,
            diagnostic=diagnostic and f"{key}: {diagnostic.name}",
            rule="" if self.threshold is None or not diagnostic else f"; fires {diagnostic.op} {self.threshold:g}",
            tolerance=self.tolerance and self.tolerance.text,
            allowed=self.tolerance and self.tolerance.describe(number(self.old)))
        return text + (f" — {self.detail}" if self.detail else "")


@dataclass(frozen=True)
class CheckpointComparison:
    """One checkpoint against its saved report: the changes, each table figure's ``(old, new)``, the tolerances."""

    label: str
    changes: list[Change]
    figures: dict[str, tuple[Any, Any]]
    tolerances: dict[str, Tolerance]

    @property
    def failed(self) -> bool:
        return any(change.kind.fails for change in self.changes)

    def summary(self) -> str:
        """The failure message (a passing item's report section): failing changes first."""
        if not self.changes:
            return f"{self.label}: no change against the saved report"
        failing = [c for c in self.changes if c.kind.fails]
        shown = [c for c in self.changes if not c.kind.fails]
        head = f"{len(failing)} regression{'s' * (len(failing) > 1)}" if failing else "no regression"
        lines = [f"{self.label}: {head} against the saved report", *("  " + c.describe() for c in failing)]
        if shown:
            lines += ["  also changed:" if failing else "  changed:", *("    " + c.describe() for c in shown)]
        return "\n".join(lines)


def compare_reports(old: Mapping[str, Any], new: Mapping[str, Any],
                    tolerances: Iterable[Tolerance] = ()) -> CheckpointComparison:
    """Compare two report dicts (``DiagnosticReport.to_dict()``) of one checkpoint."""
    tolerances, known, changes = {t.figure: t for t in tolerances}, figures(), []
    for figure in (f for f in known.values() if f.diagnostic):
        key = figure.diagnostic
        before, after = (get(r, "diagnostics", key, "fires") for r in (old, new))
        before, after = (f if isinstance(f, bool) else None for f in (before, after))
        if before == after:
            continue
        if after is None:
            kind, detail = Kind.NOT_EVALUATED, get(new, "diagnostics", key, "detail")
        elif before is None:
            kind, detail = Kind.NOW_EVALUATED, "and fires" if after else ""
        else:
            kind, detail = (Kind.CROSSED, get(new, "diagnostics", key, "submode")) if after else (Kind.CLEARED, "")
        changes.append(Change(figure.name, figure.read(old), figure.read(new), kind,
                              number(get(new, "diagnostics", key, "threshold")),
                              detail=detail if isinstance(detail, str) else ""))
    lost = {c.figure for c in changes if c.kind is Kind.NOT_EVALUATED}
    layers = [[number(get(row, "gamma")) for row in r["layers"]] if isinstance(r.get("layers"), list) else []
              for r in (old, new)]
    for name, tolerance in tolerances.items():
        if name == "layer_gamma" and len(layers[0]) != len(layers[1]):
            changes.append(Change(name, len(layers[0]), len(layers[1]), Kind.LAYER_COUNT, tolerance=tolerance))
            continue
        pairs = zip(*layers) if name == "layer_gamma" else [(known[name].read(old), known[name].read(new))]
        for index, (before, after) in enumerate(pairs):
            figure = f"{name}[{index}]" if name == "layer_gamma" else name
            if before is None or after is None and figure in lost:
                continue
            if after is None or tolerance.exceeded(before, after):
                kind = Kind.UNDEFINED if after is None else Kind.BEYOND
                changes.append(Change(figure, before, after, kind, tolerance=tolerance))
    if old.get("verdict") != new.get("verdict"):
        verdicts = [None if r.get("verdict") is None else str(r["verdict"]) for r in (old, new)]
        changes.append(Change("verdict", *verdicts, Kind.VERDICT))
    before, after = old.get("thresholds"), new.get("thresholds")
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        changes += [Change(f"threshold {name}", before.get(name), after.get(name), Kind.THRESHOLD,
                           detail="each run's crossings are judged against its own thresholds")
                    for name in dict.fromkeys([*before, *after]) if before.get(name) != after.get(name)]
    values = {name: (f.read(old), f.read(new)) for name, f in known.items() if name != "layer_gamma"}
    if "layer_gamma" in tolerances:
        for index in range(max(map(len, layers))):
            values[f"layer_gamma[{index}]"] = tuple(g[index] if index < len(g) else None for g in layers)
    return CheckpointComparison(str(new.get("label", "")), changes, values, tolerances)


def _status(comparison: CheckpointComparison, figure: str) -> str:
    """``FAIL: crossed, beyond tolerance``, ``cleared``, ``ok (1pp)`` (its tolerance) or ``ok``."""
    kinds = [c.kind for c in comparison.changes
             if c.figure == figure or c.kind is Kind.LAYER_COUNT and figure.startswith("layer_gamma")]
    failing = [kind for kind in kinds if kind.fails]
    if kinds:
        return ("FAIL: " if failing else "") + ", ".join(dict.fromkeys(kind.label for kind in failing or kinds))
    tolerance = comparison.tolerances.get(figure.split("[")[0])
    return f"ok ({tolerance.amount:g}{tolerance.unit})" if tolerance else "ok"


def comparison_table(comparisons: Iterable[CheckpointComparison]) -> str:
    """A terminal table, a row per checkpoint and figure and per changed verdict or threshold."""
    rows = [("checkpoint", "figure", "old", "new", "change", "status")]
    for c in comparisons:
        rows += [(c.label, figure, fmt(figure, old), fmt(figure, new), fmt_change(figure, old, new),
                  _status(c, figure)) for figure, (old, new) in c.figures.items()]
        rows += [(c.label, x.figure, fmt(x.figure, x.old), fmt(x.figure, x.new), "", "changed")
                 for x in c.changes if x.kind in (Kind.VERDICT, Kind.THRESHOLD)]
    return text_table(rows)
