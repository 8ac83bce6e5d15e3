#!/usr/bin/env bash
# The test command (works on a fresh clone):
#
#   scripts/test.sh                     everything, failing fast, cheapest first:
#                                         1. lint         ruff check prefect_ml tests
#                                         2. types        mypy (files and options from pyproject.toml)
#                                         3. unit         pytest tests/unit         (no servers, < 1 min)
#                                         4. services     scripts/setup-test-services.sh
#                                         5. integration  pytest tests/integration  (real servers; 2 workers)
#   scripts/test.sh --unit [PYTEST ARGS...]
#                                       phases 1-3 only (no services); PYTEST ARGS go to pytest tests/unit
#   scripts/test.sh PYTEST ARGS...      services, then pytest with those args, e.g.
#                                         scripts/test.sh tests/integration -k deployments
#                                         scripts/test.sh tests/unit/test_storage.py -x
#
# Before any phase it creates .venv (python3 -m venv) if missing, installs uv into it and installs the
# project with its test extra (uv pip install -e '.[test]': pytest, ruff, mypy, ...). A missing service
# makes the tests that need it skip (fail under CI=true). Each phase prints one line with its duration.
#
# Exit status: the first failing phase's (pytest's for a pytest phase); "no tests collected"
# (pytest's 5) is a failure (1) for every pytest call.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

mode=full
if [ "$#" -gt 0 ]; then
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --unit) mode=unit; shift ;;
        *) mode=args ;;
    esac
fi

export PREFECT_ML_TEST_STATE="${PREFECT_ML_TEST_STATE:-$REPO/.cache/test-services}"
mkdir -p "$PREFECT_ML_TEST_STATE"

say() { echo "test.sh: $*"; }
now_ms() { date +%s%3N; }
since() {  # seconds since a now_ms value, one decimal
    local ms=$(( $(now_ms) - $1 ))
    printf '%d.%d s' $(( ms / 1000 )) $(( ms % 1000 / 100 ))
}
T0=$(now_ms)

# --- .venv with prefect-ml and its test extra (shared with scripts/demo.sh) --------------------------
t=$(now_ms)
BOOTSTRAP_EXTRAS=test
source "$REPO/scripts/bootstrap.sh"
say "[setup] .venv with prefect-ml[test]: ready in $(since "$t")"

# Servers and CLIs the tests start (prefect, mlflow, moto_server) come from the venv.
export PATH="$VENV/bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# tests never reach a user's own servers, and loopback traffic never goes through a proxy
unset PREFECT_API_URL PREFECT_API_KEY MLFLOW_TRACKING_URI PREFECT_ML_ARTIFACT_ROOT PREFECT_ML_INFRASTRUCTURE
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

case "$mode" in
    full) total=5 ;;
    unit) total=3 ;;
    args) total=2 ;;
esac
phase_no=0

# phase NAME CMD...: run one phase; print one line with its outcome and duration; stop at a failure.
phase() {
    local name="$1" rc=0 t shown
    shift
    phase_no=$((phase_no + 1))
    shown="$*"
    [ "$1" = pytest_run ] && shown="python -m pytest ${*:2}"
    [ "$1" = services ] && shown="scripts/setup-test-services.sh"
    say "[$phase_no/$total] $name: running ${shown/#$PY /python }"
    t=$(now_ms)
    "$@" || rc=$?
    if [ "$rc" -eq 0 ]; then
        say "[$phase_no/$total] $name: passed in $(since "$t")"
        return 0
    fi
    say "[$phase_no/$total] $name: FAILED (exit status $rc) in $(since "$t"); stopping (total $(since "$T0"))" >&2
    exit "$rc"
}

# pytest ARGS...: pytest, with "no tests collected" (exit status 5) turned into a failure (1).
pytest_run() {
    local rc=0
    "$PY" -m pytest "$@" || rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "test.sh: pytest collected no tests (exit status 5); an empty test run is a failure" >&2
        return 1
    fi
    return "$rc"
}

# The services never fail the run here: a missing one makes its tests skip (or fail under CI).
services() {
    if ! bash "$REPO/scripts/setup-test-services.sh"; then
        if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
            say "some test services are missing (see above): under CI the tests that need them fail"
        else
            say "some test services are missing (see above): the tests that need them will skip"
        fi
    fi
}

# The integration tier on PREFECT_ML_TEST_WORKERS pytest-xdist workers (default 2; 0 or 1: one
# process). Its tests mostly wait on servers, containers and subprocesses, so 2 workers pay off
# even on 2 cores; tests/integration/conftest.py keeps the Docker modules together on one worker.
WORKERS="${PREFECT_ML_TEST_WORKERS:-2}"
XDIST=()
if [ "$WORKERS" -gt 1 ]; then
    XDIST=(-n "$WORKERS" --dist loadscope)
fi

case "$mode" in
    full|unit)
        phase "lint" "$PY" -m ruff check prefect_ml tests
        phase "types" "$PY" -m mypy
        phase "unit tests" pytest_run tests/unit "$@"
        if [ "$mode" = full ]; then
            phase "test services" services
            phase "integration tests" pytest_run tests/integration "${XDIST[@]}"
        fi
        ;;
    args)
        phase "test services" services
        phase "tests" pytest_run "$@"
        ;;
esac
say "all $total phases passed in $(since "$T0")"
