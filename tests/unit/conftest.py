"""The unit tier: no server and no Docker engine. Two guards turn an accidental use into a clear failure
instead of a silent, slow one:

- Prefect: no API URL and no ephemeral server (by default Prefect starts a server subprocess when
  no API URL is set), so a flow run or a client call fails with "No Prefect API URL provided";
- Docker: DOCKER_HOST points at a socket that does not exist (a test may set its own).

A test that needs either belongs in tests/integration/.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

NO_DOCKER_ENGINE = "unix:///nonexistent/unit-tests-have-no-docker-engine.sock"


@pytest.fixture(autouse=True)
def no_servers(monkeypatch):
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED, temporary_settings

    monkeypatch.setenv("DOCKER_HOST", NO_DOCKER_ENGINE)
    with temporary_settings(updates={PREFECT_SERVER_EPHEMERAL_ENABLED: False}, restore_defaults={PREFECT_API_URL}):
        yield


@pytest.fixture
def azure_home(tmp_path, monkeypatch) -> Path:
    """A fresh PREFECT_ML_HOME, the default artifact root, and no "accepted but ignored" warning remembered
    (they are once per file and key): for the Azure file tests."""
    from prefect_ml.dsl import component

    monkeypatch.setenv("PREFECT_ML_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_ML_ARTIFACT_ROOT", raising=False)
    component._warned.clear()
    return tmp_path / "home"


def write_yaml(folder: Path, text: str, name: str = "pipeline.yml") -> Path:
    """Write dedented YAML `text` as `folder/name`; returns the file."""
    p = folder / name
    p.write_text(textwrap.dedent(text).lstrip())
    return p
