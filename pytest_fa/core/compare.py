"""A run against a saved JSON report (``--fa-compare``), as pytest-benchmark's compare: a checkpoint
fails when a diagnostic crossed its threshold or is no longer evaluated, or a figure moved beyond its
tolerance (:mod:`pytest_fa.core.tolerance`) or became undefined; other changes are only shown. No torch."""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_fa import __version__
from pytest_fa.core import registry
from pytest_fa.core.tolerance import CompareError, Tolerance, figures, fmt, fmt_change, get, number
from pytest_fa.errors import setting

_WRITE_HINT = f"give a JSON file written by a previous run with {setting('report_json', 'PATH')}"
_RESAVE = f"re-save it with this version ({setting('report_json', 'PATH')})"
READS_FROM = (0, 1)  # the oldest major.minor whose reports this version reads (the report format of 0.1)


def _checkpoint(report: Mapping[str, Any]) -> str | None:
    """``context.checkpoint``, normalised (``./a//b.pt`` is ``a/b.pt``); None when absent."""
    path = get(report, "context", "checkpoint")
    return os.path.normpath(path) if isinstance(path, str) and path else None


def load_saved_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A ``--fa-report-json`` file this version can compare with: JSON from a pytest-fa :data:`READS_FROM`
    up to this one, reports with a ``label``, no checkpoint twice, and every diagnostic compare reads
    with its ``fires`` and ``value`` (a missing one would let a regression pass unchecked)."""
    p = Path(path)
    source = f"saved report {p}"
    if not p.exists():
        raise CompareError(f"{source}: no such file; {_WRITE_HINT}")
    if p.is_dir():
        raise CompareError(f"{source} is a folder; give the JSON file inside it (the PATH of {setting('report_json')})")
    try:
        payload = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise CompareError(f"{source} is not JSON (not UTF-8 text); {_WRITE_HINT}") from None
    except json.JSONDecodeError as exc:
        raise CompareError(f"{source} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); "
                           f"{_WRITE_HINT}") from None
    except OSError as exc:
        raise CompareError(f"{source} cannot be read ({exc.strerror or exc}); check its permissions") from None
    declared = payload.get("pytest_fa") if isinstance(payload, Mapping) else None
    if declared is not None:  # before the layout: a newer version may lay it out otherwise
        written = re.match(r"(\d+)\.(\d+)", declared) if isinstance(declared, str) else None
        if written is None:
            raise CompareError(f"{source} declares the pytest-fa version {declared!r}, which is no version; {_RESAVE}")
        written = tuple(map(int, written.groups()))
        if written > tuple(map(int, re.match(r"(\d+)\.(\d+)", __version__).groups())):
            raise CompareError(f"{source} was written by pytest-fa {declared}, this is {__version__}; {_RESAVE}")
        if written < READS_FROM:
            raise CompareError(f"{source} was written by pytest-fa {declared}, whose reports this version "
                               f"({__version__}) does not read; {_RESAVE}")
    if not isinstance(payload, Mapping):
        raise CompareError(f"{source} is JSON but not a pytest-fa report: its top level is a "
                           f"{type(payload).__name__}, not an object with a \"reports\" list; {_WRITE_HINT}")
    if not isinstance(payload.get("reports"), list):
        keys = ", ".join(sorted(map(str, payload))) or "none"
        hint = " (it looks like a pytest-benchmark file)" if "benchmarks" in payload else ""
        raise CompareError(f"{source} is JSON but not a pytest-fa report: no \"reports\" list (top-level keys: "
                           f"{keys}){hint}; {_WRITE_HINT}")
    seen: dict[tuple[str, str], int] = {}
    for index, report in enumerate(payload["reports"]):
        if not (isinstance(report, Mapping) and isinstance(report.get("label"), str)
                and isinstance(report.get("diagnostics"), Mapping)):
            raise CompareError(f"{source} is not a pytest-fa report: reports[{index}] has no \"label\" text and "
                               f"\"diagnostics\" object; {_WRITE_HINT}")
        key = ("path", _checkpoint(report)) if _checkpoint(report) else ("label", report["label"])
        if key in seen:
            raise CompareError(f"{source} holds checkpoint {key[1]} twice (reports[{seen[key]}] and reports[{index}]), "
                               "so a comparison cannot tell which to use; write it again from a run that diagnoses "
                               "each checkpoint once")
        seen[key] = index
    if not payload["reports"]:
        raise CompareError(f"{source} holds no reports, so nothing to compare against; {_WRITE_HINT}")
    if declared is None:
        raise CompareError(f"{source} declares no \"pytest_fa\" version, so this version cannot tell whether it "
                           f"reads it; {_RESAVE}")
    for index, report in enumerate(payload["reports"]):
        for key in (f.diagnostic for f in figures().values() if f.diagnostic):
            where, name = f"{source}, reports[{index}] ({report['label']})", f"({key}) {registry.get(key).name}"
            result = report["diagnostics"].get(key)
            if not isinstance(result, Mapping):
                raise CompareError(f"{where} has no diagnostic {name} in \"diagnostics\", so a comparison could "
                                   f"not tell whether it crossed its threshold; {_WRITE_HINT}")
            for field, types, expected in (("fires", (bool, type(None)), "true, false or null (not evaluated)"),
                                           ("value", (int, float, type(None)), "a number or null")):
                if field not in result or type(result[field]) not in types:
                    found = repr(result[field]) if field in result else "missing"
                    raise CompareError(f"{where}: diagnostic {name}: \"{field}\" is {found}, not {expected}; "
                                       f"{_WRITE_HINT}")
    return payload


def match_reports(old_reports: Sequence[Mapping], new_reports: Sequence[Mapping],
                  ) -> list[tuple[Mapping, Mapping | None]]:
    """Each new report with its saved one (None: absent): by ``label`` when it names one report on
    each side (the checkpoint may have moved), else by ``context.checkpoint``."""
    pairs = []
    for new in new_reports:
        label = new.get("label")
        candidates = [old for old in old_reports if old.get("label") == label]
        if len(candidates) <= 1 and sum(r.get("label") == label for r in new_reports) <= 1:
            pairs.append((new, candidates[0] if candidates else None))
        else:
            pairs.append((new, next((old for old in candidates if _checkpoint(old) == _checkpoint(new)), None)))
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
    from pytest_fa.core.render import text_table

    rows = [("checkpoint", "figure", "old", "new", "change", "status")]
    for c in comparisons:
        rows += [(c.label, figure, fmt(figure, old), fmt(figure, new), fmt_change(figure, old, new),
                  _status(c, figure)) for figure, (old, new) in c.figures.items()]
        rows += [(c.label, x.figure, fmt(x.figure, x.old), fmt(x.figure, x.new), "", "changed")
                 for x in c.changes if x.kind in (Kind.VERDICT, Kind.THRESHOLD)]
    return text_table(rows)
