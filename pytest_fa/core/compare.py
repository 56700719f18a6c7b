"""Compare a protocol run with a saved JSON report (``--fa-compare=old.json``).

In the manner of pytest-benchmark's ``--benchmark-compare``: reports are matched per
checkpoint, and a checkpoint *fails* the comparison when

1. a diagnostic crossed its threshold (``fires`` False → True), or was evaluated before
   and is not evaluated now;
2. a figure given a tolerance (``--fa-compare-fail=headline_acc:1pp``) moved in its bad
   direction by more than the tolerance, or became undefined.

Shown, never failing: a diagnostic that stopped firing or is evaluated now, a changed
verdict, changed thresholds, and checkpoints absent from the saved report ("new, nothing to
compare"). Checkpoints only in the saved report are ignored (a run may select a subset).

Pure Python, no torch: the plugin reads a saved report before anything is loaded.

Use::

    old = load_saved_report("old.json")
    tolerances = parse_fail_specs(["headline_acc:1pp", "growth:20%"])
    comparisons = compare_payloads(old, new_payload, tolerances)
    print(comparison_table(comparisons))
    if any(c.failed for c in comparisons):
        raise AssertionError(failure_message(comparisons))
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_fa import __version__
from pytest_fa.core import registry
from pytest_fa.errors import FAError, setting

# -- errors --------------------------------------------------------------------------------


class CompareError(FAError):
    """A saved report cannot be read or compared, or a tolerance spec cannot be parsed."""


_WRITE_HINT = f"give a JSON file written by a previous run with {setting('report_json', 'PATH')}"
_RESAVE = f"re-save it with this version ({setting('report_json', 'PATH')})"

# -- reading report dicts ------------------------------------------------------------------


def _get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or None where a key is missing or a level is not a dict."""
    for key in keys:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def _number(value: Any) -> float | None:
    """A finite real number as float; anything else (None, NaN, Inf, bool, text) is None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fires(report: Mapping[str, Any], key: str) -> bool | None:
    """``diagnostics[key].fires``; None when not evaluated or absent."""
    fires = _get(report, "diagnostics", key, "fires")
    return fires if isinstance(fires, bool) else None


def _checkpoint(report: Mapping[str, Any]) -> str | None:
    """``context.checkpoint``, normalised (``./a//b.pt`` is ``a/b.pt``); None when absent."""
    path = _get(report, "context", "checkpoint")
    return os.path.normpath(path) if isinstance(path, str) and path else None


def _layer_gammas(report: Mapping[str, Any]) -> list[float | None]:
    """``layers[i].gamma`` of a report dict, None where undefined."""
    layers = report.get("layers")
    if not isinstance(layers, list):
        return []
    return [_number(_get(row, "gamma")) for row in layers]


# -- figures -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Figure:
    """A number of a report that can be compared, and which way is worse.

    ``worse`` is ``"down"`` or ``"up"``; ``units`` the amount units a tolerance on it may
    use besides plain (absolute) and ``%`` (relative); ``pp`` is the size of one
    percentage point in the figure's own units; ``diagnostic`` the key whose threshold
    crossing is reported under this figure's name.
    """

    name: str
    description: str
    worse: str
    read: Callable[[Mapping[str, Any]], float | None]
    spec: str = ".4g"
    units: tuple[str, ...] = ()
    pp: float = 1.0
    diagnostic: str | None = None


def _diagnostic(diagnostic: registry.Diagnostic, description: str, **options: Any) -> Figure:
    """The figure of a diagnostic's statistic, under the registry's name for it: worse
    towards its firing side."""
    key = diagnostic.key
    worse = "up" if diagnostic.fires_above else "down"
    return Figure(diagnostic.statistic, description, worse, lambda report: _number(_get(report, "diagnostics", key, "value")),
                  diagnostic=key, **options)


def _read(*keys: str) -> Callable[[Mapping[str, Any]], float | None]:
    return lambda report: _number(_get(report, *keys))


_ACCURACY = Figure("headline_acc", "headline accuracy (fraction)", "down", _read("accuracy", "headline"),
                   spec=".4f", units=("pp",), pp=0.01)
_GAMMA = (
    Figure("deep_gamma", "mean Γ_l over layers ≥ 1", "down", _read("gamma", "mean_deep_layers")),
    Figure("all_gamma", "mean Γ_l over all layers", "down", _read("gamma", "mean_all_layers")),
    Figure("layer_gamma", "every layer's Γ_l, one by one", "down", lambda report: None),
)
#: how the built-in diagnostics' statistics read in a comparison, in table order; a
#: diagnostic registered later follows them as "(key) name" in the default number format
_DIAGNOSTIC_STYLE: dict[str, tuple[str, dict[str, Any]]] = {
    "d": ("(d) frozen-blocks margin, points", {"units": ("pp",)}),
    "a": ("(a) residual growth, max ‖h_{l+1}‖/‖h_l‖", {"units": ("x",)}),
    "b": ("(b) reference ‖g_L‖ at the floor's batch size", {"spec": ".2e", "units": ("x",)}),
    "c": ("(c) direction stability, mean cosine", {}),
}


def figure_list() -> tuple[Figure, ...]:
    """Every comparable figure in table order: the headline accuracy, the statistic of each
    registered diagnostic that names one, then Γ."""
    with_statistic = {d.key: d for d in registry.DIAGNOSTICS if d.statistic}
    keys = [k for k in _DIAGNOSTIC_STYLE if k in with_statistic] + [k for k in with_statistic if k not in _DIAGNOSTIC_STYLE]
    diagnostics = []
    for key in keys:
        diagnostic = with_statistic[key]
        description, options = _DIAGNOSTIC_STYLE.get(key, (f"({key}) {diagnostic.name}", {}))
        diagnostics.append(_diagnostic(diagnostic, description, **options))
    return (_ACCURACY, *diagnostics, *_GAMMA)


def figures() -> dict[str, Figure]:
    """Comparable figures by name, in table order."""
    return {f.name: f for f in figure_list()}


def table_figures() -> tuple[str, ...]:
    """Figures every checkpoint gets a table line for (``layer_gamma[i]`` lines only with a tolerance)."""
    return tuple(name for name in figures() if name != "layer_gamma")


def _figure(name: str) -> Figure:
    return figures()[name.split("[", 1)[0]]


def _fmt_value(figure: str, value: float | str | None) -> str:
    """A figure's value for a table: accuracies ``0.9584``, grad_ref ``2.20e-04``, else ``.4g``;
    None is ``—``."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    known = figures().get(figure.split("[", 1)[0])
    return format(value, known.spec if known is not None else "g")


def _fmt_change(figure: str, old: float | None, new: float | None) -> str:
    """``new − old``: accuracies and margins in points, grad_ref as a factor ``×0.31``."""
    if old is None or new is None:
        return "" if old is None and new is None else "—"
    delta = new - old
    name = figure.split("[", 1)[0]
    if name == "headline_acc":
        return f"{100 * delta:+.2f}pp"
    if name == "margin_pp":
        return f"{delta:+.2f}pp"
    if name == "grad_ref":
        return f"×{new / old:.3g}" if old > 0 and new > 0 else f"{delta:+.2e}"
    return f"{delta:+.3g}"


# -- tolerances ----------------------------------------------------------------------------

_UNITS = ("", "%", "pp", "x")
_SPEC = re.compile(r"^(?P<amount>[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?)"
                   r"\s*(?P<unit>%|pp|x)?$")
_SLACK = 1e-9  # relative: a move of exactly the tolerance passes despite float rounding


@dataclass(frozen=True)
class Tolerance:
    """How far a figure may move in its bad direction before the comparison fails.

    ``unit``: ``""`` absolute (in the figure's own units), ``"%"`` relative to ``|old|``,
    ``"pp"`` percentage points (headline_acc: 1pp = 0.01; margin_pp: 1pp = 1), ``"x"`` a
    factor ≥ 1 (``grad_ref:10x`` fails below old/10, ``growth:2x`` above 2·old). A move of
    exactly the tolerance passes.
    """

    figure: str
    amount: float
    unit: str = ""

    @property
    def text(self) -> str:
        return f"{self.figure}:{self.amount:g}{self.unit}"

    @property
    def worse(self) -> str:
        return figures()[self.figure].worse

    def limit(self, old: float) -> float:
        """The furthest the new value may go in the bad direction from ``old``."""
        sign = -1.0 if self.worse == "down" else 1.0
        if self.unit == "x":
            return old / self.amount if self.worse == "down" else old * self.amount
        if self.unit == "%":
            step = abs(old) * self.amount / 100.0
        elif self.unit == "pp":
            step = self.amount * figures()[self.figure].pp
        else:
            step = self.amount
        return old + sign * step

    def exceeded(self, old: float | None, new: float | None) -> bool:
        """Whether ``new`` is beyond :meth:`limit` (None on either side: not exceeded)."""
        if old is None or new is None:
            return False
        limit = self.limit(old)
        beyond = new < limit if self.worse == "down" else new > limit
        return beyond and not math.isclose(new, limit, rel_tol=_SLACK, abs_tol=0.0)

    def describe(self, old: float | None = None) -> str:
        """``a drop of at most 1pp (to 0.8848)``: the rule, and the limit when ``old`` is given."""
        if self.unit == "x":
            rule = f"at most {self.amount:g}× {'lower' if self.worse == 'down' else 'higher'}"
        else:
            amount = f"{self.amount:g}{self.unit}" + (" of the old value" if self.unit == "%" else "")
            rule = f"a {'drop' if self.worse == 'down' else 'rise'} of at most {amount}"
        if old is not None:
            rule += f" (to {_fmt_value(self.figure, self.limit(old))})"
        return rule


def _known_figures() -> str:
    return "; ".join(f"{f.name} ({f.description}, worse {f.worse})" for f in figure_list())


_SPEC_EXAMPLE = "e.g. headline_acc:1pp, deep_gamma:0.05, growth:20% or grad_ref:10x"


def parse_fail_spec(text: str) -> Tolerance:
    """Parse ``FIGURE:AMOUNT[UNIT]`` into a :class:`Tolerance`.

    FIGURE is one of :func:`figures` (case-insensitive). AMOUNT is a non-negative decimal
    number; UNIT is none (absolute, in the figure's units), ``%`` (relative to the old
    value's magnitude), ``pp`` (points; headline_acc and margin_pp only) or ``x`` (a factor
    ≥ 1; growth and grad_ref only). Examples: ``headline_acc:1pp`` (fail on a drop of more
    than 1 point), ``deep_gamma:0.05``, ``growth:20%``, ``grad_ref:10x``.
    """
    if not isinstance(text, str):
        raise CompareError(f"tolerance {text!r} is not text; write FIGURE:AMOUNT[UNIT], {_SPEC_EXAMPLE}")
    spec = text.strip()
    name, colon, amount_text = spec.partition(":")
    name, amount_text = name.strip().lower(), amount_text.strip().lower()
    if not colon:
        raise CompareError(
            f"tolerance {text!r}: write FIGURE:AMOUNT[UNIT] with a colon, {_SPEC_EXAMPLE}; "
            f"figures: {_known_figures()}"
        )
    figure = figures().get(name)
    if figure is None:
        raise CompareError(
            f"tolerance {text!r}: unknown figure {name!r}; known: {_known_figures()}; {_SPEC_EXAMPLE}"
        )
    match = _SPEC.match(amount_text)
    if match is None:
        raise CompareError(
            f"tolerance {text!r}: amount {amount_text!r} is not a non-negative number with an "
            f"optional unit % (relative), pp (points) or x (factor); {_SPEC_EXAMPLE}"
        )
    amount, unit = float(match["amount"]), match["unit"] or ""
    if unit in ("pp", "x") and unit not in figure.units:
        takes = [f.name for f in figure_list() if unit in f.units]
        raise CompareError(
            f"tolerance {text!r}: the unit {unit!r} applies to {' and '.join(takes)} only; "
            f"for {name} give a plain amount (absolute) or a % (relative), e.g. {name}:0.05 or {name}:10%"
        )
    if not math.isfinite(amount):
        raise CompareError(f"tolerance {text!r}: the amount must be finite; {_SPEC_EXAMPLE}")
    if unit == "x" and amount < 1.0:
        raise CompareError(
            f"tolerance {text!r}: a factor is at least 1 ({name}:10x allows a move by 10× "
            f"in the bad direction); {_SPEC_EXAMPLE}"
        )
    return Tolerance(name, amount, unit)


def parse_fail_specs(specs: str | Iterable[str]) -> tuple[Tolerance, ...]:
    """Parse several specs (a list, e.g. a repeated option, and/or comma-separated text);
    empty items are skipped, a figure given twice is an error."""
    items = [specs] if isinstance(specs, str) else list(specs)
    tolerances: dict[str, Tolerance] = {}
    for item in items:
        for part in str(item).split(","):
            if not part.strip():
                continue
            tolerance = parse_fail_spec(part)
            if tolerance.figure in tolerances:
                raise CompareError(
                    f"tolerance for {tolerance.figure} given twice ({tolerances[tolerance.figure].text} "
                    f"and {tolerance.text}); keep one"
                )
            tolerances[tolerance.figure] = tolerance
    return tuple(tolerances.values())


def _tolerances(tolerances: Iterable[Tolerance | str] | Mapping[str, Tolerance] | None) -> dict[str, Tolerance]:
    if tolerances is None:
        return {}
    if isinstance(tolerances, Mapping):
        items: list[Any] = list(tolerances.values())
    elif isinstance(tolerances, str):
        items = [tolerances]
    else:
        items = list(tolerances)
    texts = [t for t in items if isinstance(t, str)]
    given = [t for t in items if isinstance(t, Tolerance)]
    if len(texts) + len(given) != len(items):
        raise CompareError("tolerances must be Tolerance objects or FIGURE:AMOUNT[UNIT] strings")
    out: dict[str, Tolerance] = {}
    for tolerance in [*given, *parse_fail_specs(texts)]:
        if tolerance.figure in out:
            raise CompareError(f"tolerance for {tolerance.figure} given twice; keep one")
        if tolerance.figure not in figures():
            raise CompareError(f"tolerance for unknown figure {tolerance.figure!r}; known: {_known_figures()}")
        out[tolerance.figure] = tolerance
    return out


# -- loading and validating ----------------------------------------------------------------


def load_saved_report(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a payload written by ``--fa-report-json`` (see :func:`validate_payload`);
    a saved report without reports is an error too, and so is one written by a pytest-fa this
    version does not read (:func:`_check_version`) or one whose reports lack a diagnostic or
    a field of it that compare reads (:func:`_check_diagnostics`)."""
    p = Path(path)
    if not p.exists():
        raise CompareError(f"saved report {p}: no such file; {_WRITE_HINT}")
    if p.is_dir():
        raise CompareError(
            f"saved report {p} is a folder; give the JSON file inside it (the PATH of {setting('report_json')})"
        )
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CompareError(f"saved report {p} is not JSON (not UTF-8 text); {_WRITE_HINT}") from None
    except OSError as exc:
        raise CompareError(f"saved report {p} cannot be read ({exc.strerror or exc}); check its permissions") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CompareError(
            f"saved report {p} is not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}); {_WRITE_HINT}"
        ) from None
    declared = payload.get("pytest_fa") if isinstance(payload, Mapping) else None
    if declared is not None:  # before the layout: a newer version may lay it out otherwise
        _check_version(declared, f"saved report {p}")
    validate_payload(payload, f"saved report {p}")
    if not payload["reports"]:
        raise CompareError(f"saved report {p} holds no reports, so nothing to compare against; {_WRITE_HINT}")
    if declared is None:
        raise CompareError(
            f"saved report {p} declares no \"pytest_fa\" version, so this version cannot tell whether it "
            f"reads it; {_RESAVE}"
        )
    for index, report in enumerate(payload["reports"]):
        _check_diagnostics(report, f"saved report {p}, reports[{index}] ({report['label']})")
    return payload


READS_FROM = (0, 1)
"""The oldest ``major.minor`` whose reports this version reads (the report format of 0.1)."""


def _version(text: str) -> tuple[int, int] | None:
    """``major.minor`` of a version string such as ``0.1.0`` or ``0.2.0rc1``; None if it has none."""
    match = re.match(r"(\d+)\.(\d+)", text)
    return (int(match[1]), int(match[2])) if match else None


def _check_version(declared: Any, source: str) -> None:
    """A saved report is read only when written by a pytest-fa whose ``major.minor`` lies from
    :data:`READS_FROM` up to this one's: a newer one may record what this one misreads."""
    written = _version(declared) if isinstance(declared, str) else None
    if written is None:
        raise CompareError(f"{source} declares the pytest-fa version {declared!r}, which is no version; {_RESAVE}")
    if written > _version(__version__):
        raise CompareError(f"{source} was written by pytest-fa {declared}, this is {__version__}; {_RESAVE}")
    if written < READS_FROM:
        raise CompareError(
            f"{source} was written by pytest-fa {declared}, whose reports this version ({__version__}) "
            f"does not read; {_RESAVE}"
        )


_SAVED_FIELDS = {
    "fires": ((bool, type(None)), "true, false or null (not evaluated)"),
    "value": ((int, float, type(None)), "a number or null"),
}
"""The fields compare reads of a saved diagnostic, their JSON types and how to say them."""


def _check_diagnostics(report: Mapping[str, Any], source: str) -> None:
    """Each diagnostic that compare reads is in ``report["diagnostics"]`` with the fields of
    :data:`_SAVED_FIELDS`. A missing ``fires`` would read as "not evaluated before" and a junk
    ``value`` as "undefined before": both would let a regression pass unchecked."""
    for key in (f.diagnostic for f in figure_list() if f.diagnostic):
        name = f"({key}) {registry.get(key).name}"
        result = report["diagnostics"].get(key)
        if not isinstance(result, Mapping):
            raise CompareError(
                f"{source} has no diagnostic {name} in \"diagnostics\", so a comparison could not tell "
                f"whether it crossed its threshold; {_WRITE_HINT}"
            )
        for field_name, (types, expected) in _SAVED_FIELDS.items():
            if field_name not in result:
                found = "missing"
            elif not isinstance(result[field_name], types) or (field_name == "value" and isinstance(result[field_name], bool)):
                found = repr(result[field_name])
            else:
                continue
            raise CompareError(
                f"{source}: diagnostic {name}: \"{field_name}\" is {found}, not {expected}; {_WRITE_HINT}"
            )


def validate_payload(payload: Any, source: str = "payload", *, unique: bool = True) -> Mapping[str, Any]:
    """Check that ``payload`` is a pytest-fa report: a dict with a ``reports`` list whose
    entries have a ``label`` (text) and ``diagnostics`` (dict), and (``unique``) no
    checkpoint twice: the same ``context.checkpoint``, or the same label without one.
    Returns ``payload``; raises :class:`CompareError` saying what is wrong."""
    if not isinstance(payload, Mapping):
        raise CompareError(
            f"{source} is JSON but not a pytest-fa report: its top level is a "
            f"{type(payload).__name__}, not an object with a \"reports\" list; {_WRITE_HINT}"
        )
    reports = payload.get("reports")
    if not isinstance(reports, list):
        keys = ", ".join(sorted(map(str, payload))) or "none"
        hint = " (it looks like a pytest-benchmark file)" if "benchmarks" in payload else ""
        raise CompareError(
            f"{source} is JSON but not a pytest-fa report: no \"reports\" list (top-level keys: "
            f"{keys}){hint}; {_WRITE_HINT}"
        )
    seen: dict[tuple[str, str], int] = {}
    for index, report in enumerate(reports):
        if not isinstance(report, Mapping) or not isinstance(report.get("label"), str) \
                or not isinstance(report.get("diagnostics"), Mapping):
            raise CompareError(
                f"{source} is not a pytest-fa report: reports[{index}] has no \"label\" text and "
                f"\"diagnostics\" object; {_WRITE_HINT}"
            )
        path = _checkpoint(report)
        key = ("path", path) if path else ("label", report["label"])
        if unique and key in seen:
            name = key[1]
            raise CompareError(
                f"{source} holds checkpoint {name} twice (reports[{seen[key]}] and reports[{index}]), "
                "so a comparison cannot tell which to use; write it again from a run that "
                "diagnoses each checkpoint once"
            )
        seen[key] = index
    return payload


# -- comparing -----------------------------------------------------------------------------

CROSSED = "crossed"
CLEARED = "cleared"
NOT_EVALUATED = "not evaluated"
NOW_EVALUATED = "now evaluated"
BEYOND = "beyond tolerance"
UNDEFINED = "undefined"
LAYER_COUNT = "layer count"
VERDICT = "verdict"
THRESHOLD = "threshold"
_FAILING_KINDS = frozenset({CROSSED, NOT_EVALUATED, BEYOND, UNDEFINED, LAYER_COUNT})
"""Change kinds that fail the comparison; the others are only shown."""


@dataclass(frozen=True)
class Change:
    """One notable difference for a checkpoint, saved (``old``) against this run (``new``).

    ``kind`` is one of the constants above (``fails`` iff it is in :data:`_FAILING_KINDS`);
    ``threshold`` is this run's threshold for crossings, ``tolerance`` the tolerance broken.
    """

    figure: str
    old: float | str | None
    new: float | str | None
    kind: str
    threshold: float | None = None
    tolerance: Tolerance | None = None
    detail: str = ""

    @property
    def fails(self) -> bool:
        return self.kind in _FAILING_KINDS

    @property
    def delta(self) -> float | None:
        """``new − old`` when both are numbers, else None."""
        old, new = self.old, self.new
        if isinstance(old, (int, float)) and isinstance(new, (int, float)):
            return float(new) - float(old)
        return None

    def describe(self) -> str:
        """One line with the numbers, as in an assertion message: old → new (Δ), the rule."""
        figure = self.figure
        values = f"{_fmt_value(figure, self.old)} → {_fmt_value(figure, self.new)}"
        change = _fmt_change(figure, _number(self.old), _number(self.new))
        if change and change != "—":
            values += f" (Δ {change})"
        if self.kind in (CROSSED, CLEARED, NOT_EVALUATED, NOW_EVALUATED):
            key = _figure(figure).diagnostic
            what = {
                CROSSED: "crossed its threshold, now fires",
                CLEARED: "no longer fires",
                NOT_EVALUATED: "was evaluated, now is not",
                NOW_EVALUATED: "now evaluated",
            }[self.kind]
            rule = f"fires {registry.get(key).op} {self.threshold:g}" if self.threshold is not None else ""
            text = f"{figure} ({key}: {registry.get(key).name}) {what}: {values}"
            text += f"; {rule}" if rule else ""
        elif self.kind == BEYOND and self.tolerance is not None:
            text = (f"{figure} moved beyond its tolerance {self.tolerance.text}: {values}; allowed: "
                    f"{self.tolerance.describe(_number(self.old))}")
        elif self.kind == UNDEFINED:
            text = f"{figure} became undefined: {values}; a tolerance ({self.tolerance.text if self.tolerance else '?'}) needs a number"
        elif self.kind == LAYER_COUNT:
            text = f"{figure}: the layer count changed, {self.old} → {self.new}; per-layer Γ cannot be compared"
        elif self.kind == VERDICT:
            text = f"verdict: {self.old!r} → {self.new!r}"
        else:
            text = f"{figure} changed: {values}"
        return text + (f" — {self.detail}" if self.detail else "")


@dataclass
class CheckpointComparison:
    """One checkpoint of this run against its saved report.

    ``missing``: the saved report has no such checkpoint (never fails). ``figures`` maps each
    table figure to ``(old, new)``.
    """

    label: str
    checkpoint: str | None = None
    old_checkpoint: str | None = None
    changes: list[Change] = field(default_factory=list)
    figures: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    tolerances: dict[str, Tolerance] = field(default_factory=dict)
    missing: bool = False

    @property
    def failed(self) -> bool:
        return any(change.fails for change in self.changes)

    @property
    def failures(self) -> list[Change]:
        return [change for change in self.changes if change.fails]

    def summary(self) -> str:
        """Text for a failure message: failing changes first, each with old → new, Δ and the rule."""
        if self.missing:
            return f"{self.label}: new, nothing to compare (not in the saved report)"
        if not self.changes:
            return f"{self.label}: no change against the saved report"
        failures = self.failures
        shown = [c for c in self.changes if not c.fails]
        if failures:
            n = len(failures)
            head = f"{self.label}: {n} regression{'s' if n > 1 else ''} against the saved report"
        else:
            head = f"{self.label}: no regression against the saved report"
        lines = [head, *("  " + c.describe() for c in failures)]
        if shown:
            lines.append("  also changed:" if failures else "  changed:")
            lines.extend("    " + c.describe() for c in shown)
        return "\n".join(lines)


def compare_reports(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Iterable[Tolerance | str] | Mapping[str, Tolerance] | None = None,
) -> CheckpointComparison:
    """Compare two report dicts (``DiagnosticReport.to_dict()``) of one checkpoint."""
    tols = _tolerances(tolerances)
    known = figures()
    changes: list[Change] = []
    not_evaluated: set[str] = set()
    for figure, key in ((name, f.diagnostic) for name, f in known.items() if f.diagnostic):
        before, after = _fires(old, key), _fires(new, key)
        if before == after:
            continue
        threshold = _number(_get(new, "diagnostics", key, "threshold"))
        if after is None:
            kind = NOT_EVALUATED
            not_evaluated.add(figure)
        elif before is None:
            kind = NOW_EVALUATED
        else:
            kind = CROSSED if after else CLEARED
        detail = _get(new, "diagnostics", key, "detail") if kind == NOT_EVALUATED else ""
        if kind == NOW_EVALUATED and after:
            detail = "and fires"
        submode = _get(new, "diagnostics", key, "submode")
        if kind == CROSSED and isinstance(submode, str) and submode:
            detail = submode
        changes.append(Change(figure, known[figure].read(old), known[figure].read(new), kind,
                              threshold=threshold, detail=detail if isinstance(detail, str) else ""))
    for name, tolerance in tols.items():
        if name == "layer_gamma":
            changes.extend(_layer_changes(old, new, tolerance))
            continue
        before, after = known[name].read(old), known[name].read(new)
        if before is None:
            continue
        if after is None:
            if name not in not_evaluated:
                changes.append(Change(name, before, None, UNDEFINED, tolerance=tolerance))
        elif tolerance.exceeded(before, after):
            changes.append(Change(name, before, after, BEYOND, tolerance=tolerance))
    old_verdict, new_verdict = old.get("verdict"), new.get("verdict")
    if old_verdict != new_verdict:
        changes.append(Change(VERDICT, _text(old_verdict), _text(new_verdict), VERDICT))
    changes.extend(_threshold_changes(old, new))
    values = {name: (known[name].read(old), known[name].read(new)) for name in table_figures()}
    if "layer_gamma" in tols:
        before, after = _layer_gammas(old), _layer_gammas(new)
        for index in range(max(len(before), len(after))):
            values[f"layer_gamma[{index}]"] = (
                before[index] if index < len(before) else None,
                after[index] if index < len(after) else None,
            )
    return CheckpointComparison(
        label=str(new.get("label", "")),
        checkpoint=_checkpoint(new),
        old_checkpoint=_checkpoint(old),
        changes=changes,
        figures=values,
        tolerances=tols,
    )


def _text(value: Any) -> str | None:
    return None if value is None else str(value)


def _layer_changes(old: Mapping[str, Any], new: Mapping[str, Any], tolerance: Tolerance) -> list[Change]:
    before, after = _layer_gammas(old), _layer_gammas(new)
    if len(before) != len(after):
        return [Change("layer_gamma", len(before), len(after), LAYER_COUNT, tolerance=tolerance)]
    changes = []
    for index, (b, a) in enumerate(zip(before, after)):
        name = f"layer_gamma[{index}]"
        if b is None:
            continue
        if a is None:
            changes.append(Change(name, b, None, UNDEFINED, tolerance=tolerance))
        elif tolerance.exceeded(b, a):
            changes.append(Change(name, b, a, BEYOND, tolerance=tolerance))
    return changes


def _threshold_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = old.get("thresholds"), new.get("thresholds")
    if not isinstance(before, Mapping) or not isinstance(after, Mapping):
        return []
    changes = []
    for name in [*before, *(k for k in after if k not in before)]:
        b, a = before.get(name), after.get(name)
        if b != a:
            changes.append(Change(
                f"threshold {name}", b, a, THRESHOLD,
                detail="each run's crossings are judged against its own thresholds",
            ))
    return changes


def match_reports(
    old_reports: Sequence[Mapping[str, Any]], new_reports: Sequence[Mapping[str, Any]]
) -> list[tuple[Mapping[str, Any], Mapping[str, Any] | None]]:
    """Pair each new report with its saved one (None: absent).

    By ``label`` when it names one report in each payload (the checkpoint may have moved);
    when a label is shared within either payload, by ``context.checkpoint`` among those.
    """
    pairs = []
    for new in new_reports:
        label = new.get("label")
        candidates = [old for old in old_reports if old.get("label") == label]
        ambiguous = len(candidates) > 1 or sum(r.get("label") == label for r in new_reports) > 1
        if not ambiguous:
            pairs.append((new, candidates[0] if candidates else None))
            continue
        path = _checkpoint(new)
        pairs.append((new, next((old for old in candidates if _checkpoint(old) == path), None)))
    return pairs


def compare_payloads(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    tolerances: Iterable[Tolerance | str] | Mapping[str, Tolerance] | None = None,
) -> list[CheckpointComparison]:
    """Compare every checkpoint of ``new`` (this run's payload) with ``old`` (a saved one),
    in ``new``'s order; see :func:`match_reports` and :func:`compare_reports`. ``new`` may
    hold a checkpoint twice (both are compared with its saved report), ``old`` may not."""
    validate_payload(old, "saved report")
    validate_payload(new, "this run's report", unique=False)
    tols = _tolerances(tolerances)
    comparisons = []
    for new_report, old_report in match_reports(old["reports"], new["reports"]):
        if old_report is None:
            comparisons.append(CheckpointComparison(
                label=str(new_report.get("label", "")),
                checkpoint=_checkpoint(new_report),
                figures={name: (None, _figure(name).read(new_report)) for name in table_figures()},
                tolerances=tols,
                missing=True,
            ))
        else:
            comparisons.append(compare_reports(old_report, new_report, tols))
    return comparisons


def failure_message(comparisons: Iterable[CheckpointComparison]) -> str:
    """The summaries of the failed comparisons, blank-line separated ("" when none failed)."""
    return "\n\n".join(c.summary() for c in comparisons if c.failed)


# -- the table -----------------------------------------------------------------------------

COLUMNS = ("checkpoint", "figure", "old", "new", "change", "status")


def _status(comparison: CheckpointComparison, figure: str) -> str:
    changes = [c for c in comparison.changes if c.figure == figure or (
        c.kind == LAYER_COUNT and figure.startswith("layer_gamma"))]
    failing = [c.kind for c in changes if c.fails]
    if failing:
        return "FAIL: " + ", ".join(dict.fromkeys(failing))
    shown = [c.kind for c in changes]
    if shown:
        return ", ".join(dict.fromkeys(shown))
    tolerance = comparison.tolerances.get(figure.split("[", 1)[0])
    return f"ok ({tolerance.text.split(':', 1)[1]})" if tolerance else "ok"


def _comparison_rows(comparisons: Iterable[CheckpointComparison]) -> list[tuple[str, ...]]:
    """The table's rows: one per checkpoint and figure, plus changed verdicts and thresholds."""
    rows = []
    for comparison in comparisons:
        label = comparison.label
        if comparison.missing:
            rows.append((label, "—", "—", "—", "", "new, nothing to compare"))
            continue
        for figure, (old, new) in comparison.figures.items():
            rows.append((label, figure, _fmt_value(figure, old), _fmt_value(figure, new),
                         _fmt_change(figure, old, new), _status(comparison, figure)))
        for change in comparison.changes:
            if change.kind in (VERDICT, THRESHOLD):
                rows.append((label, change.figure, _fmt_value(change.figure, change.old),
                             _fmt_value(change.figure, change.new), "", "changed"))
    return rows


def comparison_table(comparisons: Iterable[CheckpointComparison]) -> str:
    """A compact terminal table: checkpoint, figure, old, new, change, status."""
    from pytest_fa.core.render import text_table

    return text_table([COLUMNS, *_comparison_rows(comparisons)])
