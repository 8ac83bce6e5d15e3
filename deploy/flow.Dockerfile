# The flow image for Docker (and Kubernetes) work pools: prefect-ml and this project in one image.
# A flow run in it starts in /opt/prefect-ml (flows/, components/, environments/ as in the checkout)
# with prefect-ml installed in /opt/venv; its steps then run on process infrastructure inside the
# container (PREFECT_ML_INFRASTRUCTURE=process) or on any other block.
#
# Build it with scripts/build-flow-image.sh (tag = content hash, an unchanged project is not rebuilt);
# the legacy builder is enough (no BuildKit features). Build context, made by that script:
#   project files (what `git ls-files` lists under pyproject.toml README.md prefect_ml flows components
#   environments), build/constraints.txt (pins from the deploying venv), build/requirements/*.txt (the
#   requirements of the project's CPU environments, so process steps in the container install nothing),
#   build/ca-bundle.crt (may be empty).
ARG BASE_IMAGE=prefect-ml/base:bookworm
FROM ${BASE_IMAGE}

# 1. dependencies (this layer depends on pyproject.toml and the pins only: code changes reuse it).
#    uv installs them in seconds; the CA bundle is for TLS-inspecting proxies during the build only.
COPY pyproject.toml /tmp/build/pyproject.toml
COPY build/ /tmp/build/
RUN set -eu; \
    if [ -s /tmp/build/ca-bundle.crt ]; then export PIP_CERT=/tmp/build/ca-bundle.crt SSL_CERT_FILE=/tmp/build/ca-bundle.crt; fi; \
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore UV_NO_CACHE=1; \
    python3 -m venv /opt/venv; \
    /opt/venv/bin/python -m pip install -q uv; \
    /opt/venv/bin/python -m uv pip install --python /opt/venv/bin/python -q \
        -r /tmp/build/pyproject.toml $(for f in /tmp/build/requirements/*.txt; do [ -f "$f" ] && echo "-r $f"; done) \
        setuptools wheel -c /tmp/build/constraints.txt; \
    rm -rf /tmp/build

# 2. the project: prefect-ml itself (no dependencies, no network) and its flows/components/environments
COPY . /opt/prefect-ml/
RUN set -eu; \
    /opt/venv/bin/python -m uv pip install --python /opt/venv/bin/python -q --no-deps --no-build-isolation \
        --offline /opt/prefect-ml; \
    /opt/venv/bin/python -m pip uninstall -y -q uv; \
    rm -rf /opt/prefect-ml/build /opt/prefect-ml/*.egg-info

ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PREFECT_ML_INFRASTRUCTURE=process
WORKDIR /opt/prefect-ml
