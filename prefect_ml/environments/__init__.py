"""Environments: `environments/<name>/environment.yaml` -> content hash -> Docker image or local venv.

What lives where:
    spec.py    the `Environment` record, finding and parsing `environment.yaml`, the spec hash
    conda.py   a conda file -> pip requirements (base images without conda)
    image.py   Dockerfile, build context, image hash and tag, `ensure_image`, `base_image_id`, build lock
    venv.py    `venv_path`, `ensure_venv` (the process infrastructure's venvs)
    make-base-image.sh   a local Debian base image without a registry (`prefect-ml env base-image`)

Nothing here imports docker-py at module level, nor anything above this layer (pipelines, steps,
infrastructure): functions that talk to the Docker engine take a docker-py client from the caller
(`prefect_ml.infrastructure.docker_client` makes them).
"""

from prefect_ml.environments.conda import conda_pip_requirements
from prefect_ml.environments.image import (
    base_image_id,
    ca_bundle,
    content_hash,
    ensure_image,
    image_for,
    image_hash,
    image_tag,
)
from prefect_ml.environments.spec import (
    Environment,
    base_image_setting,
    cache_identity,
    find_environment,
    known_environments,
    load_environment,
    search_dirs,
)
from prefect_ml.environments.venv import ensure_venv, venv_path

__all__ = [
    "Environment",
    "base_image_id",
    "base_image_setting",
    "ca_bundle",
    "cache_identity",
    "conda_pip_requirements",
    "content_hash",
    "ensure_image",
    "ensure_venv",
    "find_environment",
    "image_for",
    "image_hash",
    "image_tag",
    "known_environments",
    "load_environment",
    "search_dirs",
    "venv_path",
]
