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
if [[ " $* " == *" --quick "* ]] && [ -z "${PREFECT_ML_BENCH_API_URL:-}" ]; then
    # a smoke test: one Prefect server for every script instead of a temporary API each (~16 s apiece);
    # bench_first_run still starts its own (it measures that start)
    home="$(mktemp -d)"
    port="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    PREFECT_HOME="$home" PREFECT_SERVER_ANALYTICS_ENABLED=false setsid "$PY" -c 'from prefect.cli import app; app()' \
        server start --host 127.0.0.1 --port "$port" >"$home/server.log" 2>&1 </dev/null &
    server=$!
    trap 'kill -- "-$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$home"' EXIT
    export PREFECT_ML_BENCH_API_URL="http://127.0.0.1:$port/api"
    if ! "$PY" -c 'import sys, time, urllib.request
for _ in range(240):
    try:
        urllib.request.urlopen(sys.argv[1] + "/health", timeout=2); sys.exit(0)
    except Exception:
        time.sleep(0.5)
sys.exit(1)' "$PREFECT_ML_BENCH_API_URL"; then
        echo "the shared Prefect server did not start; see $home/server.log" >&2
        tail -n 20 "$home/server.log" >&2
        exit 1
    fi
    echo "=== shared Prefect server for --quick: $PREFECT_ML_BENCH_API_URL"
fi
for name in $ONLY; do
    echo "=== bench_${name} $(date -u +%H:%M:%S) load $(cut -d' ' -f1-3 /proc/loadavg)"
    "$PY" "benchmarks/bench_${name}.py" "$@" || { echo "bench_${name} failed"; status=1; }
done
[[ " $* " == *" --quick "* ]] || "$PY" benchmarks/make_doc.py
exit $status
