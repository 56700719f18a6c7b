"""Several seeds of one configuration (``report.context["configuration"]``: all but the seed the
same): mean ± sd of the protocol's numbers, a verdict count, and their table."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pytest_fa.core import registry
from pytest_fa.core.render import fmt_mean_sd, text_table

if TYPE_CHECKING:
    from pytest_fa.core.report import DiagnosticReport


def statistic_names() -> tuple[str, ...]:
    """Accuracy, each seed-table diagnostic's statistic (registry order), the deep-layer Γ."""
    return ("headline_acc", *(d.statistic for d in registry.seed_table_diagnostics()), "deep_gamma")


def report_statistics(report: DiagnosticReport) -> dict[str, float | None]:
    """The numbers a seed table averages; a diagnostic that was not evaluated gives None."""
    numbers: dict[str, float | None] = {"headline_acc": report.headline_acc}
    for diagnostic in registry.seed_table_diagnostics():
        result = report.diagnostics.get(diagnostic.key)
        numbers[diagnostic.statistic] = result.value if result is not None and result.evaluated else None
    numbers["deep_gamma"] = report.gamma_mean(1)
    return numbers


def mean_sd(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """``(mean, sample sd, n)`` over the defined, finite values (sd None below two)."""
    defined = [v for v in values if v is not None and math.isfinite(v)]
    if not defined:
        return None, None, 0
    sd = statistics.stdev(defined) if len(defined) > 1 else None
    return statistics.fmean(defined), sd, len(defined)


@dataclass
class SeedGroup:
    """The reports of one configuration trained with different seeds."""

    configuration: dict[str, Any]
    reports: list[DiagnosticReport]

    @property
    def name(self) -> str:
        c = self.configuration
        return f"{c.get('method')} {c.get('arch')} {c.get('epochs')} ep"

    @property
    def seeds(self) -> list[Any]:
        return [r.context.get("seed") for r in self.reports]

    def statistics(self) -> dict[str, tuple[float | None, float | None, int]]:
        rows = [report_statistics(r) for r in self.reports]
        return {key: mean_sd([row[key] for row in rows]) for key in statistic_names()}

    def verdicts(self) -> dict[str, int]:
        """How many seeds got each verdict."""
        return dict(Counter(r.verdict for r in self.reports))

    def to_dict(self) -> dict[str, Any]:
        return {
            "configuration": self.configuration,
            "seeds": self.seeds,
            "checkpoints": [r.label for r in self.reports],
            "statistics": {k: {"mean": m, "sd": s, "n": n} for k, (m, s, n) in self.statistics().items()},
            "verdicts": self.verdicts(),
        }


def seed_groups(reports: list[DiagnosticReport]) -> list[SeedGroup]:
    """Groups of at least two reports that share a configuration and differ in seed."""
    grouped: dict[str, list[DiagnosticReport]] = {}
    for report in reports:
        if report.context.get("configuration") is not None:
            grouped.setdefault(report.context["configuration"], []).append(report)
    return [SeedGroup(json.loads(key), members) for key, members in grouped.items()
            if len({r.context.get("seed") for r in members}) >= 2]


def seed_columns() -> tuple[str, ...]:
    """The seed table's header; a diagnostic's column carries its unit when the unit is a
    word (`` pp``), not when it is a sign glued to the number (``×``)."""
    named = tuple(d.column + (d.unit if d.unit.startswith(" ") else "") for d in registry.seed_table_diagnostics())
    return ("configuration", "seeds", "acc", *named, "deep Γ", "verdicts")


def seed_rows(groups: list[SeedGroup]) -> list[tuple[str, ...]]:
    """Per configuration: mean ± sd over its seeds and how many seeds got each verdict."""
    rows = []
    for group in groups:
        stats = group.statistics()
        rows.append((
            group.name,
            ", ".join(str(s) for s in group.seeds),
            fmt_mean_sd(stats["headline_acc"], ".4f"),
            *(fmt_mean_sd(stats[d.statistic], d.column_format.replace("+", "")) for d in registry.seed_table_diagnostics()),
            fmt_mean_sd(stats["deep_gamma"], "+.3f"),
            "; ".join(f"{verdict} ×{count}" for verdict, count in group.verdicts().items()),
        ))
    return rows


def seed_table(groups: list[SeedGroup]) -> str:
    return text_table([seed_columns(), *seed_rows(groups)])
