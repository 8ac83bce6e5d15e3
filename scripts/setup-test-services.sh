#!/usr/bin/env bash
# Prepare the real services the integration tests use, all on this machine:
#   - a Docker engine (dockerd without a bridge network: containers use network_mode=host)
#   - the local base image for step containers (built with scripts/make-base-image.sh)
#   - a second Docker engine on tcp://127.0.0.1:2376 only (the "remote" engine of
#     tests/integration/test_remote_engine.py), with the base image loaded into it
#   - Azurite (Azure Blob emulator) installed with npm into .cache/node
# moto, the MLflow server and the Prefect server come from the Python venv; the tests
# start and stop every server themselves, on 127.0.0.1 only (see tests/servers.py).
#
# Idempotent: run it as often as you like; a second run only checks (~1 s).
# Without root or apt it prints what is missing and goes on; the tests that need a
# missing service then skip with a reason (and fail under CI).
# Exit status: 0 when everything is ready, 1 when something is missing.
#
# Environment:
#   PREFECT_ML_TEST_STATE   state dir for logs (default: .cache/test-services)
#   PREFECT_ML_BASE_IMAGE   base image name (default: prefect-ml/base:bookworm)
#   PREFECT_ML_REMOTE_DOCKER_PORT  port of the second engine (default: 2376; 127.0.0.1 only)
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${PREFECT_ML_TEST_STATE:-$REPO/.cache/test-services}"
BASE_IMAGE="${PREFECT_ML_BASE_IMAGE:-prefect-ml/base:bookworm}"
NODE_PREFIX="$REPO/.cache/node"
AZURITE_BLOB="$NODE_PREFIX/node_modules/.bin/azurite-blob"
DOCKERD_TIMEOUT=60

mkdir -p "$STATE"
export DEBIAN_FRONTEND=noninteractive

say() { echo "setup-test-services: $*"; }
warn() { echo "setup-test-services: $*" >&2; }
missing=()
ready=()

is_root() { [ "$(id -u)" -eq 0 ]; }
have() { command -v "$1" >/dev/null 2>&1; }
docker_up() { have docker && docker info >/dev/null 2>&1; }

# One setup at a time (two test runs started together must not both start dockerd).
if have flock; then
    exec 9>"$STATE/setup.lock"
    flock -w 900 9 || warn "could not lock $STATE/setup.lock; going on anyway"
fi

# --- 1. system packages --------------------------------------------------------------
pkgs=()
if ! docker_up && { ! have docker || ! have dockerd; }; then pkgs+=(docker.io); fi
if ! docker_up || ! docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    have debootstrap || pkgs+=(debootstrap)
fi
if [ ! -x "$AZURITE_BLOB" ] && ! have npm; then pkgs+=(npm); fi
have chromium || pkgs+=(chromium)  # the Prefect UI tests render pages headless

if [ "${#pkgs[@]}" -gt 0 ]; then
    if is_root && have apt-get; then
        say "installing ${pkgs[*]} with apt-get (log: $STATE/apt.log) ..."
        start=$SECONDS
        if apt-get -q update >"$STATE/apt.log" 2>&1 \
            && apt-get install -y -q "${pkgs[@]}" >>"$STATE/apt.log" 2>&1; then
            say "installed ${pkgs[*]} in $((SECONDS - start)) s"
        else
            warn "error: apt-get failed; last lines of $STATE/apt.log:"
            tail -n 15 "$STATE/apt.log" >&2
        fi
    elif ! is_root; then
        warn "not root: cannot install ${pkgs[*]} (ask an admin: apt-get install -y ${pkgs[*]})"
    else
        warn "apt-get not available: install ${pkgs[*]} yourself"
    fi
fi

# --- 2. Docker engine ------------------------------------------------------------------
# wait_for_engine LABEL UP PID_OF PID LOG: wait until the command UP succeeds; give up when the engine's
# process (PID, or what PID_OF finds) is gone or after DOCKERD_TIMEOUT s, with the last lines of LOG.
wait_for_engine() {
    local label="$1" up="$2" pid_of="$3" pid="$4" log="$5" start=$SECONDS
    until "$up"; do
        if ! kill -0 "$pid" 2>/dev/null && ! "$pid_of" >/dev/null; then
            warn "error: $label exited during startup; last lines of $log:"
            tail -n 20 "$log" >&2
            return 1
        fi
        if [ $((SECONDS - start)) -ge "$DOCKERD_TIMEOUT" ]; then
            warn "error: $label (pid $pid) did not answer within ${DOCKERD_TIMEOUT} s; last lines of $log:"
            tail -n 20 "$log" >&2
            return 1
        fi
        sleep 1
    done
    say "$label up after $((SECONDS - start)) s"
}

dockerd_pid() {
    # The pid of a running dockerd from its pid file (dockerd writes /var/run/docker.pid).
    local pid
    pid="$(cat /var/run/docker.pid 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if docker_up; then
    :
elif ! have docker || ! have dockerd; then
    missing+=("Docker engine (docker.io is not installed)")
elif ! is_root && [ -S /var/run/docker.sock ] && [ ! -w /var/run/docker.sock ]; then
    missing+=("Docker engine (no access to /var/run/docker.sock: add this user to the docker group)")
elif ! is_root; then
    missing+=("Docker engine (not running, and starting dockerd needs root)")
else
    pid="$(dockerd_pid)"
    if [ -n "$pid" ]; then
        say "dockerd (pid $pid) is starting; waiting for it ..."
    else
        say "starting dockerd (no bridge network, no iptables; log: $STATE/dockerd.log) ..."
        # No bridge: no docker0 and no private 172.x addresses; containers use the host
        # network. 9>&-: dockerd must not inherit (and hold forever) our lock.
        setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
            >>"$STATE/dockerd.log" 2>&1 </dev/null 9>&- &
        pid=$!
    fi
    wait_for_engine dockerd docker_up dockerd_pid "$pid" "$STATE/dockerd.log" ||
        missing+=("Docker engine (dockerd did not start, see $STATE/dockerd.log)")
fi

if docker_up; then
    ready+=("Docker engine $(docker version -f '{{.Server.Version}}' 2>/dev/null)")
    if docker network inspect bridge >/dev/null 2>&1; then
        warn "note: this engine has a default bridge network; prefect-ml never uses it" \
            "(containers run with network_mode=host)"
    fi
fi

# --- 3. base image ---------------------------------------------------------------------
if ! docker_up; then
    missing+=("base image $BASE_IMAGE (needs the Docker engine)")
elif docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    ready+=("base image $BASE_IMAGE")
elif ! is_root || ! have debootstrap; then
    missing+=("base image $BASE_IMAGE (building it needs root and debootstrap: scripts/make-base-image.sh)")
else
    say "building base image $BASE_IMAGE (~1 min) ..."
    if bash "$REPO/scripts/make-base-image.sh" "$BASE_IMAGE"; then
        ready+=("base image $BASE_IMAGE")
    else
        missing+=("base image $BASE_IMAGE (scripts/make-base-image.sh failed)")
    fi
fi

# --- 3b. a second Docker engine, standing in for a remote one ------------------------------
# Its own data root, exec root (and managed containerd), pid file, engine id (key file), config
# and unix socket; listens on tcp://127.0.0.1:PORT (loopback only, no TLS: tests only). No bridge
# network and no iptables, like the first, so it never touches the default bridge.
REMOTE_PORT="${PREFECT_ML_REMOTE_DOCKER_PORT:-2376}"
REMOTE_HOST="tcp://127.0.0.1:$REMOTE_PORT"
REMOTE_ROOT="/var/lib/docker-remote"
REMOTE_EXEC="/var/run/docker-remote"
REMOTE_PIDFILE="/var/run/docker-remote.pid"
REMOTE_SOCK="unix:///var/run/docker-remote.sock"
remote_up() { have docker && docker -H "$REMOTE_HOST" info >/dev/null 2>&1; }
remote_pid() {
    local pid
    pid="$(cat "$REMOTE_PIDFILE" 2>/dev/null)" || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

if remote_up; then
    :
elif ! have dockerd; then
    missing+=("second Docker engine on $REMOTE_HOST (docker.io is not installed)")
elif ! is_root; then
    missing+=("second Docker engine on $REMOTE_HOST (not running, and starting dockerd needs root)")
else
    pid="$(remote_pid)"
    if [ -n "$pid" ]; then
        say "second dockerd (pid $pid) is starting; waiting for it ..."
    else
        say "starting a second dockerd on $REMOTE_HOST (log: $STATE/dockerd-remote.log) ..."
        mkdir -p "$REMOTE_ROOT" "$REMOTE_EXEC" "$STATE/docker-remote"
        # Engine 20.10 derives its ID from a key file (default /etc/docker/key.json, shared with the
        # first engine); its config key "deprecated-key-path" gives the second engine a key (an ID) of
        # its own. Engines from 23.0 keep the ID in the data root and do not know the key.
        remote_conf='{}'
        if grep -q -a -- 'deprecated-key-path' "$(command -v dockerd)" 2>/dev/null; then
            remote_conf="{\"deprecated-key-path\": \"$REMOTE_ROOT/key.json\"}"
        fi
        echo "$remote_conf" >"$STATE/docker-remote/daemon.json"
        setsid nohup dockerd --config-file "$STATE/docker-remote/daemon.json" \
            --data-root "$REMOTE_ROOT" --exec-root "$REMOTE_EXEC" --pidfile "$REMOTE_PIDFILE" \
            -H "$REMOTE_SOCK" -H "$REMOTE_HOST" \
            --bridge=none --iptables=false --ip6tables=false \
            >>"$STATE/dockerd-remote.log" 2>&1 </dev/null 9>&- &
        pid=$!
    fi
    wait_for_engine "the second dockerd" remote_up remote_pid "$pid" "$STATE/dockerd-remote.log" ||
        missing+=("second Docker engine on $REMOTE_HOST (see $STATE/dockerd-remote.log)")
fi

if remote_up; then
    if [ "$(docker -H "$REMOTE_HOST" info -f '{{.ID}}' 2>/dev/null)" = "$(docker info -f '{{.ID}}' 2>/dev/null)" ]; then
        warn "note: the second engine reports the same engine ID as the first"
    fi
    if docker -H "$REMOTE_HOST" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        ready+=("second Docker engine $REMOTE_HOST with $BASE_IMAGE")
    elif docker_up && docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "loading $BASE_IMAGE into the second engine ..."
        if docker save "$BASE_IMAGE" | docker -H "$REMOTE_HOST" load >>"$STATE/dockerd-remote.log" 2>&1; then
            ready+=("second Docker engine $REMOTE_HOST with $BASE_IMAGE")
        else
            missing+=("$BASE_IMAGE in the second engine (docker save | docker -H $REMOTE_HOST load failed)")
        fi
    else
        missing+=("$BASE_IMAGE in the second engine (it needs the image in the first engine)")
    fi
fi

# --- 4. Azurite ------------------------------------------------------------------------
azurite_version() {
    sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' \
        "$NODE_PREFIX/node_modules/azurite/package.json" 2>/dev/null | head -n 1
}
if [ ! -x "$AZURITE_BLOB" ]; then
    if have npm; then
        say "installing Azurite with npm into $NODE_PREFIX (log: $STATE/npm.log) ..."
        start=$SECONDS
        mkdir -p "$NODE_PREFIX"
        # npm picks the newest azurite 3.x whose "engines" accept this Node.js.
        if npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --no-update-notifier \
            azurite@3 >"$STATE/npm.log" 2>&1 && [ -x "$AZURITE_BLOB" ]; then
            say "installed Azurite $(azurite_version) in $((SECONDS - start)) s"
        else
            warn "error: npm install azurite@3 failed; last lines of $STATE/npm.log:"
            tail -n 15 "$STATE/npm.log" >&2
        fi
    fi
fi
if [ ! -x "$AZURITE_BLOB" ]; then
    if have npm; then
        missing+=("Azurite (npm install failed, see $STATE/npm.log)")
    else
        missing+=("Azurite (needs npm: apt-get install -y npm)")
    fi
elif ! have node; then
    missing+=("Node.js to run Azurite (apt-get install -y nodejs)")
else
    ready+=("Azurite $(azurite_version) (node $(node --version))")
fi

if have chromium; then ready+=("$(chromium --version 2>/dev/null | head -1)"); else missing+=("chromium (apt-get install -y chromium)"); fi

# --- summary -----------------------------------------------------------------------------
for r in "${ready[@]}"; do say "ready: $r"; done
if [ "${#missing[@]}" -gt 0 ]; then
    for m in "${missing[@]}"; do warn "MISSING: $m"; done
    warn "tests that need a missing service will skip (and fail under CI)"
    exit 1
fi
exit 0
