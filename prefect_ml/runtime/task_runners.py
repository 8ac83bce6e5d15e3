"""Where a pipeline's steps run: the task runner, chosen when a run starts, and the distributed-run check.

A pipeline names a task runner the way a Prefect flow does (`@pipeline(task_runner=...)`: a
`TaskRunner` instance or class) or by name (`"threads"`, `"dask"`); a pipeline that names none
uses the run-wide setting `PREFECT_ML_TASK_RUNNER` (`threads` by default; `dask` with
`PREFECT_ML_DASK_ADDRESS=tcp://host:8786` sends every step to that Dask cluster through
prefect-dask's `DaskTaskRunner`). The flow holds a `PipelineTaskRunner`, which Prefect asks for a
fresh runner when a run starts (`duplicate()`), so the setting is read per run, not at import.

A step on a Dask worker may run on another machine: it stages its inputs from the artifact root
into the worker's own PREFECT_ML_HOME and publishes to the root, and it tracks to the run's MLflow
store. So a distributed run needs an artifact root and an MLflow tracking store that every worker
reaches; `check_distributed_run` refuses one with a local path before anything runs.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterable
from typing import Any

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from prefect_ml import storage
from prefect_ml.errors import InfrastructureError
from prefect_ml.settings import PrefectMLSettings, get_settings

TASK_RUNNER_NAMES = ("threads", "dask")
# MLflow tracking stores that a worker on another machine reaches (a server, a database server);
# `sqlite:`, `file:` and plain paths are local to one machine
SHARED_TRACKING_SCHEMES = ("http", "https", "databricks", "postgresql", "mysql", "mssql")


class TaskRunnerError(InfrastructureError, ValueError):
    """A task runner name is unknown, or a distributed run cannot reach what its steps need."""


class PipelineTaskRunner(TaskRunner[Any]):
    """The task runner of a `@pipeline` flow: resolves its choice (or `PREFECT_ML_TASK_RUNNER`) per run.

    Prefect enters `flow.task_runner.duplicate()` when a flow run starts; this returns the real runner
    (Prefect's `ThreadPoolTaskRunner`, prefect-dask's `DaskTaskRunner`, or the one the pipeline gave),
    so this object itself never runs a task.
    """

    def __init__(self, choice: str | TaskRunner[Any] | type[TaskRunner[Any]] | None = None) -> None:
        super().__init__()
        if isinstance(choice, type):
            choice = choice()
        if isinstance(choice, str):
            _check_name(choice, "@pipeline(task_runner=...)")
        self.choice = choice

    @property
    def name(self) -> str:
        return "prefect-ml"

    def resolve(self, settings: PrefectMLSettings | None = None) -> TaskRunner[Any]:
        """The runner a run starting now uses (not entered)."""
        if isinstance(self.choice, TaskRunner):
            return self.choice.duplicate()
        settings = settings or get_settings()
        name = self.choice or settings.task_runner
        return make_task_runner(name, settings)

    def duplicate(self) -> Any:  # the real runner, not a PipelineTaskRunner: see the class docstring
        return self.resolve()

    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Iterable[Any] | None = None,
               dependencies: Any = None) -> Any:
        raise RuntimeError("PipelineTaskRunner only chooses a task runner: submit to the one duplicate() returns")


def _check_name(name: str, where: str) -> str:
    value = name.strip().lower()
    if value not in TASK_RUNNER_NAMES:
        raise TaskRunnerError(f"{where}: unknown task runner {name!r}; use one of {', '.join(TASK_RUNNER_NAMES)} "
                              "(or give a prefect TaskRunner instance to @pipeline(task_runner=...)).")
    return value


def make_task_runner(name: str, settings: PrefectMLSettings | None = None) -> TaskRunner[Any]:
    """A fresh task runner for a name: `threads` or `dask` (at `PREFECT_ML_DASK_ADDRESS`, else a local cluster)."""
    settings = settings or get_settings()
    value = _check_name(name, "PREFECT_ML_TASK_RUNNER")
    if value == "threads":
        return ThreadPoolTaskRunner()
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError:
        raise TaskRunnerError(
            "PREFECT_ML_TASK_RUNNER=dask needs prefect-dask: pip install 'prefect-ml[dask]'.") from None
    address = (settings.dask_address or "").strip() or None
    return DaskTaskRunner(address=address)


def is_distributed(runner: Any) -> bool:
    """Whether a runner's tasks may run on other machines (a Dask cluster other than a local one)."""
    if isinstance(runner, PipelineTaskRunner):
        runner = runner.resolve()
    if "prefect_dask" not in sys.modules:
        return False
    from prefect_dask import DaskTaskRunner

    if not isinstance(runner, DaskTaskRunner):
        return False
    if runner.address:
        return True
    # a cluster class other than LocalCluster (e.g. a cloud provider's); a `cluster=` object given to
    # DaskTaskRunner is not looked at (only prefect-dask's private attribute holds it)
    import distributed

    cluster_class = runner.resolved_cluster_class or runner.cluster_class
    return cluster_class is not None and not (isinstance(cluster_class, type)
                                              and issubclass(cluster_class, distributed.LocalCluster))


def describe(runner: Any) -> str:
    """A runner in a log line: `dask at tcp://...`, `dask (local cluster)`, `threads`, or its name."""
    if "prefect_dask" in sys.modules:
        from prefect_dask import DaskTaskRunner

        if isinstance(runner, DaskTaskRunner):
            return f"dask at {runner.address}" if runner.address else "dask (a new cluster)"
    return "threads" if isinstance(runner, ThreadPoolTaskRunner) else getattr(runner, "name", type(runner).__name__)


def check_distributed_run(artifact_root: str, tracking_uri: str, runner: str = "a Dask cluster",
                          prefect_api_url: str | None = "") -> None:
    """Refuse a distributed run whose steps could not all reach the artifact root or the MLflow store.

    A worker on another machine has its own disk: a `file://` root or a SQLite/file tracking store would
    split the run's outputs and records over the workers; with no PREFECT_API_URL (`prefect_api_url`
    None) each worker would start a temporary Prefect API of its own. One line, naming what to set.
    """
    if storage.is_local(artifact_root) or storage.canonical_protocol(artifact_root) == "memory":
        raise TaskRunnerError(
            f"steps run on {runner} but the artifact root {storage.redact(artifact_root)} is a local path the "
            "workers cannot share: set PREFECT_ML_ARTIFACT_ROOT (or @pipeline(artifact_root=...)) to an s3:// "
            "or abfs:// URI.")
    scheme = tracking_uri.split("://", 1)[0].lower() if "://" in tracking_uri else ""
    if scheme.split("+", 1)[0] not in SHARED_TRACKING_SCHEMES:
        raise TaskRunnerError(
            f"steps run on {runner} but the MLflow tracking store {storage.redact(tracking_uri)} is local to this "
            "machine: set MLFLOW_TRACKING_URI to an MLflow server (http://...) every worker reaches.")
    if prefect_api_url is None:  # "" : not checked
        raise TaskRunnerError(
            f"steps run on {runner} but this run uses a temporary Prefect API that only this process reaches: "
            "set PREFECT_API_URL to a Prefect server (e.g. `prefect-ml server start`).")


# --- on a worker ------------------------------------------------------------------------------------


def dask_worker_address() -> str | None:
    """The address of the Dask worker running the caller, or None outside one (never imports distributed)."""
    if "distributed" not in sys.modules:
        return None
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        return None


INLINE_PREFIX = "inline-"  # the names `environments.aliases.materialize_inline` gives


def check_code_dir(component: Any, step_name: str, where: str) -> None:
    """A component's code dir travels by path: a worker needs the project at the same path."""
    code = getattr(component, "code", None)
    if code is not None and not os.path.isdir(code):
        raise TaskRunnerError(
            f"step '{step_name}': the component's code dir {code} does not exist on {where}; install the project "
            "at the same path on every Dask worker (see docs/distributed.md).")


def check_inline_environment(component: Any, step_name: str, where: str) -> None:
    """An inline environment (an Azure YAML's `environment: {image: ...}`) is written under the pipeline
    machine's PREFECT_ML_HOME when the YAML is loaded, so a Dask worker does not have it."""
    name = getattr(component, "environment", None) or ""
    if not name.startswith(INLINE_PREFIX):
        return
    from prefect_ml import environments

    if name not in environments.known_environments(getattr(component, "code", None)):
        raise TaskRunnerError(
            f"step '{step_name}': its environment {name} is an inline environment of the pipeline YAML, written on "
            f"the pipeline's machine when the YAML was loaded, and {where} does not have it; on Dask, name an "
            "environment of the project's environments/ instead (see docs/distributed.md).")


def this_process() -> str:
    """`hostname:pid` of the process running a step (recorded with it)."""
    return f"{socket.gethostname()}:{os.getpid()}"
