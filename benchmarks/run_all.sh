#!/usr/bin/env bash
# Every benchmark, one after another, each output saved under benchmarks/results/.
# Needs a DFA bundle: fa-train --out /tmp/bench_runs --epochs 2 --seeds 42  (writes bp_s42.pt, dfa_s42.pt)
set -euo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${BUNDLE:-/tmp/bench_runs/dfa_s42.pt}
OUT=benchmarks/results
mkdir -p "$OUT"
run() { local name=$1; shift; echo "== $name: $*"; { echo "\$ $*"; "$@" 2>&1 | grep -v '^W[0-9]\{4\} '; } | tee "$OUT/$name.txt"; }
run diagnose      python benchmarks/bench_diagnose.py --bundle "$BUNDLE" --threads 1 --repeats 21 --profile
run epoch_bp      python benchmarks/bench_epoch.py --mode base --method bp --threads 1 --repeats 11
run epoch_dfa     python benchmarks/bench_epoch.py --mode base --method dfa --threads 1 --repeats 11
run step_bp       python benchmarks/bench_epoch.py --mode step --method bp --threads 1 --repeats 15
run step_dfa      python benchmarks/bench_epoch.py --mode step --method dfa --threads 1 --repeats 15
run compile_bp    python benchmarks/bench_epoch.py --mode compile --method bp --threads 1 --repeats 3
run compile_dfa   python benchmarks/bench_epoch.py --mode compile --method dfa --threads 1 --repeats 3
run vmap          python benchmarks/bench_epoch.py --mode vmap --threads 1 --repeats 3
run cli           python benchmarks/bench_cli.py --bundle "$BUNDLE" --threads 1 --repeats 7 --breakdown
