# Sourced by scripts/demo.sh and scripts/test.sh: make .venv and install prefect-ml into it.
#   BOOTSTRAP_EXTRAS=test  installs the test extra too.
# Works on a clean Debian with only python3: installs python3-venv with apt-get when the venv
# module is missing and we are root. Sets REPO, VENV and PY.
REPO="${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
VENV="$REPO/.venv"
PY="$VENV/bin/python"
_say() { echo "bootstrap: $*"; }

if [ ! -x "$PY" ] || ! "$PY" -c 'import sys' >/dev/null 2>&1; then
    _say "creating .venv with $(python3 --version 2>&1) ..."
    if ! python3 -m venv --clear "$VENV" >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            _say "python3 -m venv needs Debian's python3-venv: installing it ..."
            DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
            python3 -m venv --clear "$VENV"
        else
            echo "bootstrap: python3 -m venv failed; install python3-venv (sudo apt-get install python3-venv)" >&2
            exit 1
        fi
    fi
fi
if ! "$PY" -m uv --version >/dev/null 2>&1; then
    _say "installing uv into .venv ..."
    "$PY" -m pip install -q --disable-pip-version-check uv
fi

# The install is editable: only a changed pyproject.toml (or other extras) needs a new one
# (uv rebuilds the editable wheel every time, ~5-8 s).
_spec="."
[ -n "${BOOTSTRAP_EXTRAS:-}" ] && _spec=".[${BOOTSTRAP_EXTRAS}]"
_stamp="$VENV/.prefect-ml-installed"
_want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) $_spec"
if grep -qxF "$_want" "$_stamp" 2>/dev/null \
    && "$PY" -c 'import importlib.metadata as m; m.version("prefect-ml")' >/dev/null 2>&1; then
    _say "prefect-ml is installed and pyproject.toml is unchanged"
else
    _say "installing prefect-ml ($_spec) ..."
    _start=$SECONDS
    "$PY" -m uv pip install -q --python "$PY" -e "$REPO/$_spec"
    echo "$_want" >>"$_stamp"
    _say "ready in $((SECONDS - _start)) s"
fi

# The tests run train_torch's CPU path in this venv. pip (not uv) takes the CPU build that a file on
# these machines' disk holds (/opt/wheels); elsewhere it downloads torch from PyPI.
if [ "${BOOTSTRAP_EXTRAS:-}" = test ] && ! "$PY" -c 'import torch' >/dev/null 2>&1; then
    _say "installing torch==2.13.0 (train_torch's tests) ..."
    _start=$SECONDS
    "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
    _say "torch ready in $((SECONDS - _start)) s"
fi
