#!/usr/bin/env bash
# Run every benchmark in turn (never in parallel: they would disturb each other), then refresh
# docs/benchmarks.md. Extra arguments (e.g. --quick, --reps 3) go to every script.
#   PY=/path/to/python bash benchmarks/run_all.sh [--reps N]
#   ONLY="orchestration parallelism" bash benchmarks/run_all.sh
set -uo pipefail
SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")/.."
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 )}"
ALL="warm_rerun orchestration parallelism data_passing staging environment reuse container memory first_run"
# bench_dask starts its own cluster, moto and MLflow (~1.5 min even with --quick): full runs only, or ONLY=dask
[[ " $* " == *" --quick "* ]] || ALL="$ALL dask"
ONLY="${ONLY:-$ALL}"
status=0
if [[ " $* " == *" --quick "* ]] && [ -z "${PREFECT_ML_BENCH_API_URL:-}" ]; then
    # a smoke test: one Prefect server for every script instead of a temporary API each (~16 s apiece);
    # bench_first_run still starts its own (it measures that start). The server is tests/servers.py's,
    # held open while this script runs again inside it.
    exec "$PY" -c 'import os, subprocess, sys, tempfile
sys.path.insert(0, "tests")
import servers
with tempfile.TemporaryDirectory() as home, servers.prefect_server(home) as url:
    print("=== shared Prefect server for --quick:", url, flush=True)
    os.environ["PREFECT_ML_BENCH_API_URL"] = url
    sys.exit(subprocess.call(["bash", *sys.argv[1:]]))' "$SELF" "$@"
fi
for name in $ONLY; do
    echo "=== bench_${name} $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$PY" "benchmarks/bench_${name}.py" "$@" || { echo "bench_${name} failed"; status=1; }
done
[[ " $* " == *" --quick "* ]] || "$PY" benchmarks/make_doc.py
exit $status
