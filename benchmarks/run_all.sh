#!/usr/bin/env bash
# Run every benchmark in turn (never in parallel: they would disturb each other), then refresh
# docs/benchmarks.md. Extra arguments (e.g. --quick, --reps 3) go to every script.
#   PY=/path/to/python bash benchmarks/run_all.sh [--reps N]
#   ONLY="orchestration parallelism" bash benchmarks/run_all.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
ONLY="${ONLY:-warm_rerun orchestration parallelism data_passing staging environment reuse container memory first_run}"
status=0
for name in $ONLY; do
    echo "=== bench_${name} $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$PY" "benchmarks/bench_${name}.py" "$@" || { echo "bench_${name} failed"; status=1; }
done
[[ " $* " == *" --quick "* ]] || "$PY" benchmarks/make_doc.py
exit $status
