"""Wall time of `pytest --fa-checkpoint=<bundle>` end to end ÷ its floor `python -c "import torch"`.

    python benchmarks/bench_cli.py --bundle /tmp/bench_runs/dfa_s42.pt --threads 1 --repeats 7 --breakdown

Every command runs as a fresh process (subprocess + time.perf_counter), interleaved round by
round with the order rotated, in an empty scratch folder under /tmp (so no test folder is
collected and nothing is written into the repository), with PYTEST_FA_CACHE=--cache and
OMP_NUM_THREADS=--threads. Contenders:

  floor         python -c "import torch"
  frozen_acc    pytest -p no:randomly <scratch> --fa-checkpoint=B --fa-frozen-acc=0.5 -o cache_dir=<cache>/pytest_cache
  frozen_acc_nohyp   the same with -p no:hypothesispytest (hypothesis's own pytest plugin
                imports all of hypothesis in its terminal summary; pytest-fa unregisters it
                before the summary when the session never imported hypothesis, so the two
                should now agree)
  cached        pytest -p no:randomly <scratch> --fa-checkpoint=B -o cache_dir=<cache>/pytest_cache
                (the frozen-blocks baseline read from the cache the untimed fill run wrote)
--breakdown adds, to locate start-up time:
  import_pytest python -c "import pytest"
  import_plugin python -c "import pytest_fa.plugin"
  pytest_empty  pytest -p no:randomly <scratch> -o ...    (no checkpoint: pytest + plugins only)
  api           the same protocol through the Python API, no pytest: load_checkpoint,
                dataset_from_spec (MNIST-1D from the cache), headline accuracy, diagnose(),
                each stage timed inside the process
and prints the slowest top-level imports of the frozen_acc run under `python -X importtime -m pytest -s`.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import fmt_ms, fmt_ratio, provenance, ratio_stats

API = """
import time
t = [time.perf_counter()]
import torch
t.append(time.perf_counter())
import pytest_fa
from pytest_fa.training.checkpoint import load_checkpoint
from pytest_fa.training.data import dataset_from_spec, eval_batches
from pytest_fa.training.methods import get_method
from pytest_fa.core.report import diagnose
from pytest_fa.training.trainer import accuracy
t.append(time.perf_counter())
loaded = load_checkpoint({bundle!r})
t.append(time.perf_counter())
data = dataset_from_spec(loaded.bundle.data)
t.append(time.perf_counter())
acc = accuracy(loaded.model, data.x_test, data.y_test)
t.append(time.perf_counter())
credit, _ = get_method(loaded.method, **loaded.state.config).credit(loaded.model, loaded.state)
report = diagnose(loaded.model, eval_batches(data, 8, 128), headline_acc=acc, frozen_acc=0.5, credit=credit)
t.append(time.perf_counter())
for name, a, b in zip(STAGES, t, t[1:]):
    print("STAGE", name, b - a)
"""
STAGES = ("import torch", "import pytest_fa modules", "load_checkpoint",
          "dataset_from_spec (cached)", "headline accuracy", "diagnose (null_draws=20)")

def run(cmd: list[str], env: dict[str, str], cwd: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - start, proc.returncode, proc.stdout + proc.stderr


def slowest_imports(cmd: list[str], env: dict[str, str], cwd: str, top: int = 8) -> list[tuple[int, str]]:
    """(cumulative µs, module) of the top-level imports of ``python -X importtime <cmd>``."""
    out = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], env=env, cwd=cwd, capture_output=True, text=True).stderr
    rows = []
    for line in out.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| (\S+)", line)  # depth 0 only
        if m:
            rows.append((int(m.group(2)), m.group(3)))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default="/tmp/bench_runs/dfa_s42.pt")
    parser.add_argument("--cache", default="/tmp/bench_cache", help="PYTEST_FA_CACHE (default /tmp/bench_cache)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for every process (default 1)")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    parser.add_argument("--breakdown", action="store_true")
    args = parser.parse_args()

    bundle = str(Path(args.bundle).resolve())
    python = sys.executable
    pytest = str(Path(python).parent / "pytest")
    scratch = tempfile.mkdtemp(prefix="bench_cli_")
    env = {**os.environ, "PYTEST_FA_CACHE": args.cache, "OMP_NUM_THREADS": str(args.threads)}
    env.pop("PYTEST_ADDOPTS", None)
    pytest_cache = f"{args.cache}/pytest_cache"
    base = [pytest, "-p", "no:randomly", "-q", scratch, f"--fa-checkpoint={bundle}"]
    commands = {
        "floor": [python, "-c", "import torch"],
        "frozen_acc": [*base, "--fa-frozen-acc=0.5", "-o", f"cache_dir={pytest_cache}"],
        "cached": [*base, "-o", f"cache_dir={pytest_cache}"],
        "frozen_acc_nohyp": [*base, "--fa-frozen-acc=0.5", "-o", f"cache_dir={pytest_cache}", "-p", "no:hypothesispytest"],
    }
    if args.breakdown:
        commands.update({
            "import_pytest": [python, "-c", "import pytest"],
            "import_plugin": [python, "-c", "import pytest_fa.plugin"],
            "pytest_empty": [pytest, "-p", "no:randomly", "-q", scratch, "-o", f"cache_dir={pytest_cache}"],
            "api": [python, "-c", f"STAGES = {STAGES!r}\n" + API.format(bundle=bundle)],
        })

    # untimed fill run: generates MNIST-1D into the cache if absent and trains + caches the baseline
    fill, rc, out = run(commands["cached"], env, scratch)
    print(f"fill run (untimed in the results; MNIST-1D and/or frozen baseline into {args.cache}): {fill:.1f} s, rc {rc}")
    if rc not in (0, 1):
        sys.exit(f"pytest failed (rc {rc}):\n{out[-3000:]}")
    cached_files = sorted(Path(pytest_cache, "d", "pytest-fa").glob("frozen-*.pt"))
    if not cached_files:
        sys.exit(f"no frozen baseline was cached under {pytest_cache}/d/pytest-fa")

    names = list(commands)
    times: dict[str, list[float]] = {n: [] for n in names}
    codes: dict[str, set[int]] = {n: set() for n in names}
    stages: dict[str, list[float]] = {n: [] for n in STAGES}
    for round_ in range(args.repeats + 1):  # round 0 is a warm-up (page cache), dropped
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed, rc, out = run(commands[name], env, scratch)
            codes[name].add(rc)
            if round_:
                times[name].append(elapsed)
                for line in out.splitlines() if name == "api" else ():
                    if line.startswith("STAGE "):
                        key, value = line[6:].rsplit(" ", 1)
                        stages[key].append(float(value))

    print(provenance())
    print(f"threads (OMP_NUM_THREADS) {args.threads}  rounds {args.repeats} (+1 warm-up)  bundle {bundle}")
    print(f"{'contender':<17} {'median wall (raw, not a result)':>32}   ratio to floor   exit codes")
    for name in names:
        ratio = "1 (baseline)" if name == "floor" else fmt_ratio(ratio_stats(times[name], times["floor"]))
        print(f"{name:<17} {fmt_ms(times[name]):>32}   {ratio}   {sorted(codes[name])}")
    print("cached ÷ frozen_acc: " + fmt_ratio(ratio_stats(times["cached"], times["frozen_acc"])))
    if args.breakdown:
        print("frozen_acc ÷ api (pytest's share over the bare protocol): " + fmt_ratio(ratio_stats(times["frozen_acc"], times["api"])))
        floor = statistics.median(times["floor"])
        print("\napi stages inside one process, median seconds ÷ median floor wall (raw seconds in brackets):")
        for key, values in stages.items():
            print(f"  {key:<28} {statistics.median(values) / floor:5.2f} x floor  ({statistics.median(values):.2f} s)")
        inside = sum(statistics.median(v) for v in stages.values())
        print(f"  {'interpreter start + exit':<28} {(statistics.median(times['api']) - inside) / floor:5.2f} x floor")
        cmd = [python, "-m", "pytest", "-s", *commands["frozen_acc"][1:]]  # -s: see imports made inside tests
        print("\nslowest top-level imports of the frozen_acc run (python -X importtime -m pytest -s ...):")
        for us, module in slowest_imports(cmd, env, scratch):
            print(f"  {us / 1e3:8.1f} ms  {module}")


if __name__ == "__main__":
    main()
