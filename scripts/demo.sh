#!/usr/bin/env bash
# The main job (README's first command), on a fresh clone:
#
#   bash scripts/demo.sh [--data CSV] [--min-auc 0.7] [--learning-rate 0.1]
#
# 1. creates .venv and installs prefect-ml into it (scripts/bootstrap.sh),
# 2. starts a local Prefect server and MLflow server in the background the first time
#    (`prefect-ml server start`: idempotent; later runs connect to them, so no temporary server
#    is started and an unchanged re-run takes about a second), and prints the UI URLs,
# 3. runs the credit-default pipeline (steps as local processes, a file:// artifact root under
#    ~/.prefect-ml) and prints where the registered model is.
# Stop the servers with `.venv/bin/prefect-ml server stop`. A PREFECT_API_URL or MLFLOW_TRACKING_URI
# you set is used as it is. PREFECT_ML_DEMO_SERVERS=false runs on the embedded default instead
# (a temporary Prefect API for this run and a local SQLite MLflow store).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
source "$REPO/scripts/bootstrap.sh"

# quiet, robust defaults for a first run (the user's own settings win)
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export MLFLOW_DISABLE_TELEMETRY="${MLFLOW_DISABLE_TELEMETRY:-true}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"
# a fresh Prefect home migrates its database on the first start: slow machines need more than 20 s
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="${PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS:-180}"
mkdir -p "${PREFECT_HOME:-$HOME/.prefect}"

if [ "${PREFECT_ML_DEMO_SERVERS:-true}" != "false" ] && { [ -z "${PREFECT_API_URL:-}" ] || [ -z "${MLFLOW_TRACKING_URI:-}" ]; }; then
    _start=$SECONDS
    if "$VENV/bin/prefect-ml" server start >/tmp/prefect-ml-server-start.$$ 2>&1; then
        grep -v '^Use them\|^Prefect UI' /tmp/prefect-ml-server-start.$$ | sed 's/^/server: /'
        echo "server: ready in $((SECONDS - _start)) s"
        eval "$("$VENV/bin/prefect-ml" server env)"   # only variables you have not set
    else
        cat /tmp/prefect-ml-server-start.$$ >&2
        echo "demo: the local servers did not start (above); running on the embedded default instead" >&2
    fi
    rm -f /tmp/prefect-ml-server-start.$$
fi
exec "$VENV/bin/python" flows/credit_default.py "$@"
