"""The unit tier: no server and no Docker engine. Two guards turn an accidental use into a clear failure
instead of a silent, slow one:

- Prefect: no API URL and no ephemeral server (by default Prefect starts a server subprocess when
  no API URL is set), so a flow run or a client call fails with "No Prefect API URL provided";
- Docker: DOCKER_HOST points at a socket that does not exist (a test may set its own).

A test that needs either belongs in tests/integration/.
"""

from __future__ import annotations

import pytest

NO_DOCKER_ENGINE = "unix:///nonexistent/unit-tests-have-no-docker-engine.sock"


@pytest.fixture(autouse=True)
def no_servers(monkeypatch):
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER_ENGINE)
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: False}, restore_defaults={PREFECT_API_URL}):
        yield
