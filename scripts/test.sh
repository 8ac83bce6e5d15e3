#!/usr/bin/env bash
# The test command (works on a fresh clone):
#
#   scripts/test.sh [PYTEST ARGS...]       e.g. scripts/test.sh -m "not integration"
#
# 1. creates .venv (python3 -m venv) if missing and installs uv into it,
# 2. installs the project with its test extra: uv pip install -e '.[test]',
# 3. prepares the test services: scripts/setup-test-services.sh (Docker engine, base
#    image, Azurite); a missing service makes its tests skip (fail under CI=true),
# 4. runs .venv/bin/python -m pytest "$@" (default options come from pyproject.toml).
#
# Exit status: pytest's; "no tests collected" (pytest's 5) is a failure (1).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export PREFECT_ML_TEST_STATE="${PREFECT_ML_TEST_STATE:-$REPO/.cache/test-services}"
mkdir -p "$PREFECT_ML_TEST_STATE"

say() { echo "test.sh: $*"; }

# --- 1-2. .venv with prefect-ml and its test extra (shared with scripts/demo.sh) ---------------
BOOTSTRAP_EXTRAS=test
source "$REPO/scripts/bootstrap.sh"

# --- 3. services -----------------------------------------------------------------------------
if ! bash "$REPO/scripts/setup-test-services.sh"; then
    if [ -n "${CI:-}" ] && [ "${CI}" != "false" ] && [ "${CI}" != "0" ]; then
        say "some test services are missing (see above): under CI the tests that need them fail"
    else
        say "some test services are missing (see above): the tests that need them will skip"
    fi
fi

# --- 4. pytest -------------------------------------------------------------------------------
# Servers and CLIs the tests start (prefect, mlflow, moto_server) come from the venv.
export PATH="$VENV/bin:$PATH"
export MLFLOW_DISABLE_TELEMETRY=true PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1
# tests never reach a user's own servers, and loopback traffic never goes through a proxy
unset PREFECT_API_URL PREFECT_API_KEY MLFLOW_TRACKING_URI PREFECT_ML_ARTIFACT_ROOT PREFECT_ML_INFRASTRUCTURE
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

say "running: python -m pytest $*"
set +e
"$PY" -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
    echo "test.sh: FAILED: pytest collected no tests (exit status 5); an empty test run is a failure" >&2
    exit 1
fi
exit "$rc"
