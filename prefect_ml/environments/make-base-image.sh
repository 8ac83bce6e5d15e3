#!/usr/bin/env bash
# Build the local base image for step containers, without any image registry:
# debootstrap a minimal Debian bookworm (python3, venv, pip, CA certificates) into a
# temporary directory and `docker import` it.
#
#   prefect-ml env base-image [--name IMAGE_NAME]      (default: prefect-ml/base:bookworm)
#   bash make-base-image.sh [IMAGE_NAME]                (this file; scripts/make-base-image.sh in a checkout)
#
# Shipped inside the package (prefect_ml/environments/), so an installed prefect-ml has it too.
# Needs root, debootstrap and a running Docker engine. ~50 s on 2 cores.
# DEBIAN_MIRROR overrides the mirror (default http://deb.debian.org/debian).
set -euo pipefail

IMAGE="${1:-prefect-ml/base:bookworm}"
SUITE=bookworm
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
INCLUDE=python3,python3-venv,python3-pip,ca-certificates

say() { echo "make-base-image: $*"; }
die() { echo "make-base-image: error: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root (run as root, or ask an admin to run this script)"
command -v debootstrap >/dev/null 2>&1 || die "debootstrap is not installed (apt-get install -y debootstrap)"
command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install -y docker.io)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (start dockerd; in a checkout: scripts/setup-test-services.sh)"

# On disk, not in a tmpfs: debootstrap creates device nodes.
ROOTFS="$(mktemp -d "${TMPDIR:-/var/tmp}/prefect-ml-rootfs.XXXXXX")"

cleanup() {
    # If debootstrap was interrupted, processes chrooted into the target (dpkg, its
    # maintainer scripts) may still run and proc/sys may still be mounted there: stop
    # those processes, unmount (deepest first), then delete without crossing into
    # another file system.
    set +e
    local p r m i
    for p in /proc/[0-9]*; do
        r="$(readlink "$p/root" 2>/dev/null)" || continue
        case "$r" in "$ROOTFS" | "$ROOTFS"/*) kill -KILL "${p#/proc/}" 2>/dev/null ;; esac
    done
    if [ -r /proc/mounts ]; then
        awk -v root="$ROOTFS" 'index($2, root "/") == 1 {print $2}' /proc/mounts \
            | sort -r | while read -r m; do umount -l "$m" 2>/dev/null; done
    fi
    for i in 1 2 3; do
        rm -rf --one-file-system "$ROOTFS" 2>/dev/null && break
        sleep 1
    done
    [ -e "$ROOTFS" ] && echo "make-base-image: warning: could not remove $ROOTFS" >&2
    rm -f "$ROOTFS.log"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "debootstrap $SUITE ($INCLUDE) from $MIRROR into $ROOTFS ..."
start=$SECONDS
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$ROOTFS.log" 2>&1; then
    tail -n 30 "$ROOTFS.log" >&2
    [ -f "$ROOTFS/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS/debootstrap/debootstrap.log" >&2
    die "debootstrap failed (see the lines above)"
fi
rm -f "$ROOTFS.log"
say "debootstrap done in $((SECONDS - start)) s"

# Drop the downloaded .debs and apt lists (~95 MB); `apt-get update` restores lists.
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/cache/apt/*.bin \
       "$ROOTFS"/var/lib/apt/lists/* 2>/dev/null || true

say "docker import -> $IMAGE ..."
start=$SECONDS
tar -C "$ROOTFS" --numeric-owner -c . \
    | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
say "imported $IMAGE in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%d MB", $1/1e6}'))"
