"""Shared fixtures: one real (ephemeral) Prefect API for the session, a fresh prefect-ml home per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data" / "credit_default.csv"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("DO_NOT_TRACK", "1")


def require(ok: bool, reason: str) -> None:
    """Skip when a service is missing, but fail under CI: CI installs every service."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"required under CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory):
    """A real Prefect API (the test harness' temporary server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def ml_home(tmp_path, monkeypatch) -> Path:
    """A fresh PREFECT_ML_HOME (artifact root, SQLite MLflow store) for one test."""
    home = tmp_path / "prefect-ml-home"
    monkeypatch.setenv("PREFECT_ML_HOME", str(home))
    monkeypatch.delenv("PREFECT_ML_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_ML_INFRASTRUCTURE", raising=False)
    return home


@pytest.fixture
def env(prefect_api, ml_home) -> Path:
    """Prefect API + fresh prefect-ml home: what most flow tests need."""
    return ml_home
