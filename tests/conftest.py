"""Shared by both tiers: environment defaults, `require()`, and a fresh prefect-ml home per test.

Fixtures that need a server (the session's Prefect API, `env`) are in tests/integration/conftest.py;
tests/unit/conftest.py keeps the unit tier off every server.
"""

from __future__ import annotations

import os
import textwrap
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from tests.paths import REPO, SHARED_DATA

# `from tests.conftest import REPO, SHARED_DATA` keeps working
__all__ = ["REPO", "SHARED_DATA", "alive", "make_env", "require", "still_running", "task_runs"]

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


def make_env(root: Path, name: str, spec: str, files: dict[str, str] | None = None) -> Path:
    """Write `root/environments/<name>/environment.yaml` (and `files` beside it); returns the folder."""
    d = root / "environments" / name
    d.mkdir(parents=True)
    (d / "environment.yaml").write_text(textwrap.dedent(spec))
    for fname, text in (files or {}).items():
        (d / fname).write_text(textwrap.dedent(text))
    return d


@pytest.fixture
def envs(tmp_path, ml_home, monkeypatch) -> Path:
    """An `environments/` root found through PREFECT_ML_ENVIRONMENTS_DIR (write into it with `make_env`)."""
    monkeypatch.setenv("PREFECT_ML_ENVIRONMENTS_DIR", str(tmp_path / "environments"))
    (tmp_path / "environments").mkdir()
    return tmp_path


@pytest.fixture
def data(tmp_path) -> Path:
    """A small local data folder: credit.csv and folder/p1.csv, folder/p2.csv."""
    d = tmp_path / "data"
    (d / "folder").mkdir(parents=True)
    (d / "credit.csv").write_text("a,b\n1,2\n")
    (d / "folder" / "p1.csv").write_text("1\n")
    (d / "folder" / "p2.csv").write_text("2\n")
    return d


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting for its reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def still_running(pids: Iterable[int], within: float = 15.0) -> set[int]:
    """The pids still running after up to `within` s (what is left of a process group gets its SIGKILL
    from the step's watchdog, asynchronously)."""
    pids = set(pids)
    deadline = time.monotonic() + within
    while (left := {p for p in pids if alive(p)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def task_runs(flow_run, names: Iterable[str] = (), within: float = 30.0) -> list:
    """The task runs of `flow_run` (a flow state or a flow-run id) once each has a final state.

    Prefect 3 records task runs from events, which reach the server after the flow returns: a read
    right away can miss a run or see one without its final state (seen in CI as `state` None).
    Waits up to `within` s for every run, and every name in `names`, then returns the last read.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = getattr(getattr(flow_run, "state_details", None), "flow_run_id", flow_run)
    wanted, deadline = set(names), time.monotonic() + within
    with get_client(sync_client=True) as c:
        while True:
            runs = c.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
            settled = all(r.state is not None and r.state.is_final() for r in runs)
            if (settled and wanted <= {r.name for r in runs}) or time.monotonic() > deadline:
                return runs
            time.sleep(0.2)
