"""Shared by both tiers: environment defaults, `require()`, and a fresh prefect-ml home per test.

Fixtures that need a server (the session's Prefect API, `env`) are in tests/integration/conftest.py;
tests/unit/conftest.py keeps the unit tier off every server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.paths import REPO, SHARED_DATA

__all__ = ["REPO", "SHARED_DATA", "require"]  # `from tests.conftest import REPO, SHARED_DATA` keeps working

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


@pytest.fixture
def ml_home(tmp_path, monkeypatch) -> Path:
    """A fresh PREFECT_ML_HOME (artifact root, SQLite MLflow store) for one test."""
    home = tmp_path / "prefect-ml-home"
    monkeypatch.setenv("PREFECT_ML_HOME", str(home))
    monkeypatch.delenv("PREFECT_ML_ARTIFACT_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_ML_INFRASTRUCTURE", raising=False)
    return home
