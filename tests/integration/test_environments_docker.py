"""Environment images against the real Docker engine: a build, then the same build as a cache hit; a
missing base image with pull policy `never` (specs, hashes, venvs and the CLI: tests/unit/test_environments.py)."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from tests.conftest import make_env, require
from tests.servers import DEFAULT_BASE_IMAGE, docker_available, docker_image_available

# --- images (real engine) ---------------------------------------------------------------------


@pytest.fixture
def docker_client(monkeypatch):
    ok, reason = docker_available()
    require(ok, reason)
    image = os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE
    ok, reason = docker_image_available(image)
    require(ok, reason)
    monkeypatch.setenv("PREFECT_ML_BASE_IMAGE", image)
    import docker

    client = docker.from_env()
    yield client
    client.close()


def test_build_then_same_build_is_a_cache_hit(envs, docker_client, capsys):
    """A new environment builds (requirements.txt + the pip part of a conda file); the same build again
    finds its tag and builds nothing."""
    from prefect_ml.environments import ensure_image, load_environment

    name = f"tiny-{uuid.uuid4().hex[:8]}"  # unique: the first build is a real one
    make_env(envs, name, f"name: {name}\nrequirements: requirements.txt\nconda: conda.yaml\n", {
        "requirements.txt": "six==1.17.0\n",
        "conda.yaml": "dependencies: [python=3.11, pip, {pip: [idna==3.10]}]\n",
    })
    env = load_environment(name)
    lines: list[str] = []
    tag = None
    try:
        t0 = time.monotonic()
        tag = ensure_image(env, docker_client, pull_policy="never", log=lines.append)
        first = time.monotonic() - t0
        assert any(line.startswith("building image") for line in lines)
        lines.clear()
        t0 = time.monotonic()
        assert ensure_image(env, docker_client, pull_policy="never", log=lines.append) == tag
        second = time.monotonic() - t0
        assert lines == []  # nothing built
        with capsys.disabled():
            print(f"\nenvironment build: first {first:.1f} s, second (cache hit) {second:.3f} s")
        out = docker_client.containers.run(
            tag, ["python", "-c", "import six, idna, sys; print(sys.prefix, six.__version__, idna.__version__)"],
            network_mode="host", remove=True).decode()
        assert out.split() == ["/opt/venv", "1.17.0", "3.10"]
        image = docker_client.images.get(tag)
        assert image.labels["prefect-ml.environment"] == name
    finally:
        if tag:
            docker_client.images.remove(tag, force=True)


def test_missing_base_image_with_pull_policy_never(envs, docker_client):
    from prefect_ml.environments import ensure_image, load_environment
    from prefect_ml.errors import EnvironmentSpecError

    make_env(envs, "nobase", "name: nobase\nbase_image: prefect-ml/does-not-exist:1\n")
    with pytest.raises(EnvironmentSpecError, match=r"environment 'nobase': image 'prefect-ml/does-not-exist:1' does "
                                                   r"not exist locally and the pull policy is 'never'.*"
                                                   r"prefect-ml env base-image"):
        ensure_image(load_environment("nobase"), docker_client, pull_policy="never")


