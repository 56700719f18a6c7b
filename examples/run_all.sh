#!/usr/bin/env bash
# Every study in turn on one data set (default MNIST-1D); later studies reuse the audit's
# bundles under runs/studies/<data>. Extra arguments go to every study, e.g.
#     examples/run_all.sh --data fashion-mnist
set -euo pipefail
cd "$(dirname "$0")/.."
for study in audit decision_utility threshold_sensitivity temporal_replay penalty_sweep null_calibration cross_architecture; do
    start=$(date +%s)
    python "examples/$study.py" "$@"
    echo "== $study: $(( $(date +%s) - start )) s"
done
