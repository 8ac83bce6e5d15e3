#!/usr/bin/env bash
# Build the local base image for step containers, without any image registry.
#
#   scripts/make-base-image.sh [IMAGE_NAME]     (default: prefect-ml/base:bookworm)
#
# The script itself ships inside the package (prefect_ml/environments/make-base-image.sh, what
# `prefect-ml env base-image` runs); this wrapper keeps the checkout path working.
set -euo pipefail
exec bash "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/prefect_ml/environments/make-base-image.sh" "$@"
