"""Shared helpers: interleaved timing and ratio statistics (no pytest)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved(contenders: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time every contender once per round, rotating the order each round; ``warmup`` rounds
    are run first and dropped. Returns seconds per contender, one entry per round."""
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            contenders[name]()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                times[name].append(elapsed)
    return times


def ratio_stats(num: list[float], den: list[float]) -> dict[str, float]:
    """Median, quartiles, min and max of the per-round ratios ``num[i] / den[i]`` (same round,
    side by side); with fewer than 4 rounds the "IQR" printed is the range."""
    ratios = sorted(n / d for n, d in zip(num, den))
    q = statistics.quantiles(ratios, n=4) if len(ratios) >= 4 else [ratios[0], statistics.median(ratios), ratios[-1]]
    return {
        "median": statistics.median(ratios),
        "min": ratios[0],
        "max": ratios[-1],
        "q1": q[0],
        "q3": q[2],
        "n": len(ratios),
    }


def fmt_ratio(s: dict[str, float]) -> str:
    return (
        f"{s['median']:.2f}x  (IQR {s['q1']:.2f}-{s['q3']:.2f}, range {s['min']:.2f}-{s['max']:.2f}, n={s['n']})"
    )


def fmt_ms(values: list[float]) -> str:
    return f"{1e3 * statistics.median(values):.1f} ms"


def provenance() -> str:
    """Which code was measured: git HEAD and a digest of every pytest_fa/**/*.py as it is on
    disk now (the working tree may hold uncommitted edits)."""
    import hashlib
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "pytest_fa"], cwd=root, capture_output=True, text=True).stdout
    digest = hashlib.sha1()
    for path in sorted((root / "pytest_fa").rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"git HEAD {head or '?'}, {len(dirty.splitlines())} uncommitted pytest_fa paths, pytest_fa/*.py sha1 {digest.hexdigest()[:12]}"
