"""Plain-text pieces of every report: a number, a diagnostic's comparison and status, a table (no torch)."""

from __future__ import annotations

from pytest_fa.core import registry
from pytest_fa.core.registry import DiagnosticResult


def text_table(rows: list) -> str:
    """Left-aligned columns two spaces apart, the first row a header underlined with dashes."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def fmt(value: float | None, spec: str = ".3g") -> str:
    return "—" if value is None else format(value, spec)


def fmt_null(mean: float | None, std: float | None) -> str:
    return "—" if mean is None or std is None else f"{mean:+.3f} ± {std:.3f}"


def fmt_gamma(value: float | None, status: str) -> str:
    return f"{value:+.3f}" if value is not None else "undefined" if status.startswith("undefined") else "n/a"


def fmt_mean_sd(stat: tuple[float | None, float | None, int], spec: str = ".3g") -> str:
    mean, sd, _ = stat
    if mean is None:
        return "—"
    return format(mean, spec) + ("" if sd is None else " ± " + format(sd, spec.replace("+", "")))


def comparison(result: DiagnosticResult) -> str:
    """``value op threshold`` as the diagnostic reads it."""
    diagnostic = registry.get(result.key)
    op, unit = diagnostic.op, diagnostic.unit
    if result.value is None:
        return f"— (fires {op} {fmt(result.threshold)}{unit})"
    return f"{fmt(result.value)}{unit} (fires {op} {fmt(result.threshold)}{unit})"


def status(result: DiagnosticResult) -> str:
    if not result.evaluated:
        return result.submode if result.not_informative else "not evaluated"
    diagnostic = registry.get(result.key)
    if not diagnostic.walk_back:
        return result.submode or ("fires" if result.fires else "ok")
    state = "FIRES" if result.fires else "ok"
    if diagnostic.submode_in_verdict and result.submode and result.submode != "above the floor":
        return f"{state} ({result.submode})"
    return state
