"""The figures a comparison reads, and ``--fa-compare-fail=FIGURE:AMOUNT[UNIT]``: how far a
figure may move in its bad direction, as a plain amount in its units, a ``%`` of the old value,
``pp`` points or an ``x`` factor ≥ 1; exactly the tolerance passes. No torch: read at start-up."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_fa.core import registry
from pytest_fa.errors import FAError


class CompareError(FAError):
    """A saved report cannot be read or compared, or a tolerance cannot be parsed."""


def get(mapping: Any, *keys: str) -> Any:
    """``mapping[k1][k2]...``, or None where a key is missing or a level is no dict."""
    for key in keys:
        mapping = mapping.get(key) if isinstance(mapping, Mapping) else None
    return mapping


def number(value: Any) -> float | None:
    """A finite real number as float; anything else (None, NaN, Inf, bool, text) is None."""
    return float(value) if type(value) in (int, float) and math.isfinite(value) else None


@dataclass(frozen=True)
class Figure:
    """A number at ``path`` in a report dict and which way is ``worse``; ``units``: what a
    tolerance on it takes besides plain and %; ``pp``: one point; ``diagnostic``: whose crossings
    it shows."""

    name: str
    description: str
    worse: str
    path: tuple[str, ...]
    spec: str = ".4g"
    units: tuple[str, ...] = ()
    pp: float = 1.0
    diagnostic: str | None = None

    def read(self, report: Mapping[str, Any]) -> float | None:
        return number(get(report, *self.path))


_STYLE = {  # the built-in diagnostics' figures in table order: description, number format, units
    "d": ("(d) frozen-blocks margin, points", ".4g", ("pp",)),
    "a": ("(a) residual growth, max ‖h_{l+1}‖/‖h_l‖", ".4g", ("x",)),
    "b": ("(b) reference ‖g_L‖ at the floor's batch size", ".2e", ("x",)),
    "c": ("(c) direction stability, mean cosine", ".4g", ()),
}


def figures() -> dict[str, Figure]:
    """Comparable figures by name in table order: the headline accuracy, the statistic of each
    registered diagnostic that names one (worse towards its firing side), then Γ."""
    order = [*_STYLE, *(d.key for d in registry.DIAGNOSTICS)]
    found = [Figure("headline_acc", "headline accuracy (fraction)", "down", ("accuracy", "headline"), ".4f", ("pp",),
                    0.01)]
    for d in sorted((d for d in registry.DIAGNOSTICS if d.statistic), key=lambda d: order.index(d.key)):
        description, spec, units = _STYLE.get(d.key, (f"({d.key}) {d.name}", ".4g", ()))
        found.append(Figure(d.statistic, description, "up" if d.fires_above else "down",
                            ("diagnostics", d.key, "value"), spec, units, diagnostic=d.key))
    found += [Figure("deep_gamma", "mean Γ_l over layers ≥ 1", "down", ("gamma", "mean_deep_layers")),
              Figure("all_gamma", "mean Γ_l over all layers", "down", ("gamma", "mean_all_layers")),
              Figure("layer_gamma", "every layer's Γ_l, one by one", "down", ())]  # read per layer
    return {f.name: f for f in found}


def fmt(figure: str, value: Any) -> str:
    """A value in its figure's format (``g`` for a threshold), ``—`` for None, text as it is."""
    if value is None or isinstance(value, str):
        return "—" if value is None else value
    return format(value, getattr(figures().get(figure.split("[")[0]), "spec", "g"))


def fmt_change(figure: str, old: Any, new: Any) -> str:
    """``new − old``, in points for a figure with ``pp`` units and as a factor ``×0.31`` for
    grad_ref; ``—`` when only one side is a number."""
    old, new, known = number(old), number(new), figures().get(figure.split("[")[0])
    if old is None or new is None:
        return "" if old is None and new is None else "—"
    if known and "pp" in known.units:
        return f"{(new - old) * (1 / known.pp):+.2f}pp"
    if figure == "grad_ref":
        return f"×{new / old:.3g}" if old > 0 and new > 0 else f"{new - old:+.2e}"
    return f"{new - old:+.3g}"


@dataclass(frozen=True)
class Tolerance:
    """How far ``figure`` may move in its bad direction: ``amount`` in its units (``unit`` ""), in
    % of ``|old|``, in points (``pp``) or as a factor (``x``: ``grad_ref:10x`` fails below old/10)."""

    figure: str
    amount: float
    unit: str = ""

    @property
    def text(self) -> str:
        return f"{self.figure}:{self.amount:g}{self.unit}"

    def limit(self, old: float) -> float:
        """The furthest the new value may go from ``old`` in the bad direction."""
        figure = figures()[self.figure]
        if self.unit == "x":
            return old / self.amount if figure.worse == "down" else old * self.amount
        step = {"%": abs(old) * self.amount / 100.0, "pp": self.amount * figure.pp}.get(self.unit, self.amount)
        return old - step if figure.worse == "down" else old + step

    def exceeded(self, old: float | None, new: float | None) -> bool:
        """Whether ``new`` is beyond :meth:`limit` by more than float rounding (never with a None)."""
        if old is None or new is None:
            return False
        limit = self.limit(old)
        beyond = new < limit if figures()[self.figure].worse == "down" else new > limit
        return beyond and not math.isclose(new, limit, rel_tol=1e-9)

    def describe(self, old: float | None = None) -> str:
        """``a drop of at most 1pp (to 0.8900)``: the rule, and the limit when ``old`` is given."""
        down, unit = figures()[self.figure].worse == "down", self.unit + " of the old value" * (self.unit == "%")
        rule = (f"at most {self.amount:g}× {'lower' if down else 'higher'}" if self.unit == "x"
                else f"a {'drop' if down else 'rise'} of at most {self.amount:g}{unit}")
        return rule if old is None else f"{rule} (to {fmt(self.figure, self.limit(old))})"


_AMOUNT = re.compile(r"(?P<amount>(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)\s*(?P<unit>%|pp|x)?")
_EXAMPLE = "e.g. headline_acc:1pp, deep_gamma:0.05, growth:20% or grad_ref:10x"


def parse_fail_spec(text: str) -> Tolerance:
    """``FIGURE:AMOUNT[UNIT]`` (any case, spaces around the parts) as a :class:`Tolerance`."""
    if not isinstance(text, str):
        raise CompareError(f"tolerance {text!r} is not text; write FIGURE:AMOUNT[UNIT], {_EXAMPLE}")
    name, colon, amount = (part.strip().lower() for part in text.partition(":"))
    known = figures()
    listing = "; ".join(f"{f.name} ({f.description}, worse {f.worse})" for f in known.values())
    if not colon:
        raise CompareError(f"tolerance {text!r}: write FIGURE:AMOUNT[UNIT] with a colon, {_EXAMPLE}; "
                           f"figures: {listing}")
    if name not in known:
        raise CompareError(f"tolerance {text!r}: unknown figure {name!r}; known: {listing}; {_EXAMPLE}")
    match = _AMOUNT.fullmatch(amount)
    if match is None:
        raise CompareError(f"tolerance {text!r}: amount {amount!r} is not a non-negative number with an optional "
                           f"unit % (relative), pp (points) or x (factor); {_EXAMPLE}")
    value, unit = float(match["amount"]), match["unit"] or ""
    if unit in ("pp", "x") and unit not in known[name].units:
        takes = " and ".join(f.name for f in known.values() if unit in f.units)
        raise CompareError(f"tolerance {text!r}: the unit {unit!r} applies to {takes} only; for {name} give a plain "
                           f"amount (absolute) or a % (relative), e.g. {name}:0.05 or {name}:10%")
    if not math.isfinite(value):
        raise CompareError(f"tolerance {text!r}: the amount must be finite; {_EXAMPLE}")
    if unit == "x" and value < 1.0:
        raise CompareError(f"tolerance {text!r}: a factor is at least 1 ({name}:10x allows a move by 10× in the "
                           f"bad direction); {_EXAMPLE}")
    return Tolerance(name, value, unit)


def parse_fail_specs(specs: str | Iterable[str]) -> tuple[Tolerance, ...]:
    """Several specs (a repeated option's values, each maybe comma-separated); empty items are
    skipped, a figure given twice is an error."""
    found: dict[str, Tolerance] = {}
    for part in ",".join([specs] if isinstance(specs, str) else map(str, specs)).split(","):
        if not part.strip():
            continue
        tolerance = parse_fail_spec(part)
        if tolerance.figure in found:
            raise CompareError(f"tolerance for {tolerance.figure} given twice ({found[tolerance.figure].text} "
                               f"and {tolerance.text}); keep one")
        found[tolerance.figure] = tolerance
    return tuple(found.values())
