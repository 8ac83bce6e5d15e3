"""The integration tier: real servers (a Prefect API for the session, MLflow, moto, Azurite, Chromium)
and the real Docker engine. Every test collected under tests/integration/ is marked `integration`."""

from __future__ import annotations

from pathlib import Path

import pytest

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
