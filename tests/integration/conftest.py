"""The integration tier: real servers (a Prefect API for the session, MLflow, moto, Azurite, Chromium)
and the real Docker engine. Every test collected under tests/integration/ is marked `integration`."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prefect_ml.infrastructure.container import MANAGED_LABEL as MANAGED  # on every step container
from tests.conftest import require
from tests.servers import DEFAULT_BASE_IMAGE, docker_available, docker_image_available

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config, items):
    # A conftest hook sees every collected item (this one is loaded for tests/integration/ only,
    # but `pytest tests` collects both tiers): mark just the items that live under this folder.
    for item in items:
        if _HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect API (the test harness' temporary server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def env(prefect_api, ml_home) -> Path:
    """Prefect API + fresh prefect-ml home: what most flow tests need."""
    return ml_home


@pytest.fixture(scope="session")
def docker_client():
    """A docker-py client for the local engine; requires the engine and the base image."""
    ok, reason = docker_available()
    require(ok, reason)
    ok, reason = docker_image_available(os.environ.get("PREFECT_ML_BASE_IMAGE") or DEFAULT_BASE_IMAGE)
    require(ok, reason)
    import docker

    client = docker.from_env()
    yield client
    client.close()


def ours(client, **labels) -> list:
    """Containers (running or not) that carry prefect-ml's labels (and the given ones)."""
    filters = [MANAGED] + [f"{k}={v}" for k, v in labels.items()]
    return client.containers.list(all=True, filters={"label": filters})
