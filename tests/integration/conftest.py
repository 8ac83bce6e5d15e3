"""The integration tier: real servers (a Prefect API for the session, MLflow, moto, Azurite, Chromium)
and the real Docker engine. Every test collected under tests/integration/ is marked `integration`."""

from __future__ import annotations

import functools
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


# Under pytest-xdist (`-n 2 --dist loadscope`, as scripts/test.sh runs this tier) each module runs whole on
# one worker (its module fixtures start once), and every module that touches a Docker engine or the
# deployment stack runs on the same worker: they check that no container of ours is left and garbage-collect
# containers, which a concurrent module's containers would upset. (xdist's own `xdist_group` marks do not
# take effect with pytest 9.2's node ids, so the grouping is this scheduler's.)
ENGINE_GROUP = "docker-engine"
_ENGINE_WORDS = ("docker", "deploy_stack")


@functools.cache
def _group(path: Path) -> str:
    """The scope a test module runs in: the engine group, or the module alone."""
    text = path.read_text().lower() if path.is_file() else ""
    return ENGINE_GROUP if any(w in text for w in _ENGINE_WORDS) else str(path)


@pytest.hookimpl(tryfirst=True)  # before xdist's own scheduler factory
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleAndEngineScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _group(config.rootpath / nodeid.split("::", 1)[0])

    return ModuleAndEngineScheduling(config, log)


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
