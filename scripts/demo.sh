#!/usr/bin/env bash
# The main job (README's first command), on a fresh clone:
#
#   bash scripts/demo.sh [--data CSV] [--min-auc 0.7] [--learning-rate 0.1]
#
# 1. creates .venv and installs prefect-ml into it (scripts/bootstrap.sh),
# 2. runs the credit-default pipeline on the embedded default: an ephemeral Prefect API,
#    a local SQLite MLflow store and a file:// artifact root under ~/.prefect-ml, steps as
#    local processes; then prints where the registered model is.
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
exec "$VENV/bin/python" flows/credit_default.py "$@"
