#!/usr/bin/env bash
# Build the flow image for the `ml-docker` work pool (deploy/flow.Dockerfile): prefect-ml and this
# project, tagged by content hash, so an unchanged project reuses the image (no build at all).
#
#   scripts/build-flow-image.sh          build the image unless it exists; prints its tag (stdout)
#   scripts/build-flow-image.sh --tag    print the tag only (no Docker needed): prefect.yaml's build step
#
# The tag is prefect-ml/flow:<16 hex> over: the project files the image holds (tracked or untracked,
# not ignored: `git ls-files` under pyproject.toml README.md prefect_ml flows components
# environments), deploy/flow.Dockerfile, the base image's name and the package pins of $PYTHON's
# environment (the image gets the versions the deploying machine runs). The image also holds the
# requirements of the project's CPU environments (environments/*/ without `gpu: true`), so steps on
# process infrastructure inside it install nothing. Progress goes to stderr.
#
# Environment:
#   PREFECT_ML_BASE_IMAGE       base image (default prefect-ml/base:bookworm; scripts/make-base-image.sh)
#   PREFECT_ML_FLOW_IMAGE       image repository (default prefect-ml/flow)
#   PREFECT_ML_BUILD_CA_BUNDLE  CA bundle for pip/uv during the build (TLS-inspecting proxies); default
#                               the host's /etc/ssl/certs/ca-certificates.crt; `none` turns it off
#   PYTHON                      interpreter whose installed versions the image pins (default:
#                               .venv/bin/python of the checkout, else python3)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
BASE_IMAGE="${PREFECT_ML_BASE_IMAGE:-prefect-ml/base:bookworm}"
REPOSITORY="${PREFECT_ML_FLOW_IMAGE:-prefect-ml/flow}"
DOCKERFILE=deploy/flow.Dockerfile
PATHS=(pyproject.toml README.md prefect_ml flows components environments)
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$REPO/.venv/bin/python" ]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi
say() { echo "build-flow-image: $*" >&2; }

files() {  # the project files, NUL-separated, sorted
    if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$REPO" ls-files -z --cached --others --exclude-standard -- "${PATHS[@]}" \
            | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done | LC_ALL=C sort -zu
    else
        find "${PATHS[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | LC_ALL=C sort -z
    fi
}

constraints() {  # name==version pins of $PYTHON's environment (editable and direct-URL installs left out)
    "$PYTHON" -m pip freeze --exclude-editable --disable-pip-version-check 2>/dev/null \
        | grep -E '^[A-Za-z0-9_.-]+==' | grep -viE '^prefect-ml==' | LC_ALL=C sort
}

CONSTRAINTS="$(constraints)"
[ -n "$CONSTRAINTS" ] || { say "error: no package pins from $PYTHON (pip freeze failed); set PYTHON"; exit 1; }
HASH="$(
    {
        printf 'base=%s\n' "$BASE_IMAGE"
        sha256sum "$DOCKERFILE"
        printf '%s\n' "$CONSTRAINTS" | sha256sum
        files | xargs -0 -r sha256sum
    } | sha256sum | cut -c1-16
)"
TAG="$REPOSITORY:$HASH"

if [ "${1:-}" = "--tag" ]; then
    echo "$TAG"
    exit 0
elif [ -n "${1:-}" ]; then
    say "usage: $0 [--tag]"
    exit 2
fi

if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "reused $TAG (unchanged project)"
    echo "$TAG"
    exit 0
fi
docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || {
    say "error: base image $BASE_IMAGE not found: build it with scripts/make-base-image.sh (or set PREFECT_ML_BASE_IMAGE)"
    exit 1
}

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
files | tar -C "$REPO" --null -T - -cf - | tar -C "$CTX" -xf -
mkdir -p "$CTX/build"
printf '%s\n' "$CONSTRAINTS" >"$CTX/build/constraints.txt"
mkdir -p "$CTX/build/requirements"
for spec in environments/*/environment.yaml; do  # CPU environments only (a GPU one is several GB)
    [ -f "$spec" ] || continue
    grep -qE '^gpu:[[:space:]]*true' "$spec" && continue
    req="$(sed -nE 's/^requirements:[[:space:]]*([^[:space:]#]+).*/\1/p' "$spec")"
    env_dir="$(dirname "$spec")"
    if [ -n "$req" ] && [ -f "$env_dir/$req" ]; then cp "$env_dir/$req" "$CTX/build/requirements/$(basename "$env_dir").txt"; fi
done
CA="${PREFECT_ML_BUILD_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
case "$CA" in
    none|off|false|0) : >"$CTX/build/ca-bundle.crt" ;;
    *) if [ -f "$CA" ]; then cp "$CA" "$CTX/build/ca-bundle.crt"; else : >"$CTX/build/ca-bundle.crt"; fi ;;
esac

say "building $TAG from $BASE_IMAGE (log: docker build output below) ..."
start=$SECONDS
# --network host: the build reaches the package index without Docker's bridge network
docker build --force-rm --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -f "$REPO/$DOCKERFILE" -t "$TAG" \
    --label "org.prefect-ml.flow-image=$HASH" "$CTX" >&2
say "built $TAG in $((SECONDS - start)) s"
echo "$TAG"
