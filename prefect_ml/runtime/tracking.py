"""MLflow tracking: a parent run per pipeline run, a nested run per step.

Two backends behind the same functions:
- an http(s) tracking URI (an MLflow server) is spoken to through its REST API with httpx
  (`runtime.mlflow_rest`): a run with nothing new to record never imports `mlflow` (2 s quiet,
  6-7 s on a loaded machine);
- a `sqlite:` (or other local) URI uses `MlflowClient` (no fluent API: steps run in threads, and
  the fluent API keeps its active-run stack per thread), imported lazily.

Writes that nothing waits for (params, final metrics and tags, run status) leave the step's
critical path: they go to one background writer per process, in order, and are flushed before
the pipeline's flow returns (`flush`, called in a `finally`, so on failure too) and at process
exit. Creating a run stays synchronous: the step's command gets its id in `MLFLOW_RUN_ID`.
A write that fails is retried by the REST client, then reported as a warning by `flush` (the
step's outcome is not changed by tracking).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prefect_ml.runtime import background
from prefect_ml.runtime.observers import StepContext, StepObserver
from prefect_ml.settings import get_settings

if TYPE_CHECKING:
    from prefect_ml.records import StepResult

_lock = threading.Lock()
_clients: dict[str, Any] = {}
_backends: dict[str, _Backend] = {}


def tracking_uri() -> str:
    return get_settings().mlflow_tracking_uri


def client():
    """An MlflowClient for the configured tracking URI (cached per URI). Imports mlflow."""
    uri = tracking_uri()
    with _lock:
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            if uri.startswith("sqlite:///"):
                from pathlib import Path

                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return _clients[uri]


def registry_client() -> Any:
    """The model registry's read/alias/tag calls in `MlflowClient`'s shape: over the REST API for an
    http(s) tracking URI (no `mlflow` import; errors are `mlflow_rest.MlflowRestError`), else the
    MlflowClient itself. Registering a new version needs `client()`."""
    b = backend()
    if isinstance(b, _RestBackend):
        from prefect_ml.runtime.mlflow_rest import RestRegistry

        return RestRegistry(b.rest)
    return client()


def registry_errors() -> tuple[type[BaseException], ...]:
    """The exceptions `registry_client()` raises for a refused or failed call (catch these, not
    `MlflowException` alone: importing it imports `mlflow`)."""
    from prefect_ml.runtime.mlflow_rest import MlflowRestError

    if isinstance(backend(), _RestBackend):
        return (MlflowRestError,)
    from mlflow.exceptions import MlflowException

    return (MlflowException, MlflowRestError)


# --- backends: REST (http) or the mlflow library (local stores) ------------------------------------


class _Backend:
    def experiment_id(self, name: str, artifact_location: str | None) -> str | None:
        raise NotImplementedError

    def create_experiment(self, name: str, artifact_location: str | None) -> str:
        raise NotImplementedError

    def create_run(self, experiment_id: str, run_name: str, tags: Mapping[str, str]) -> str:
        raise NotImplementedError

    def log_batch(self, run_id: str, params: Mapping[str, str], metrics: list[tuple[str, float, int, int]],
                  tags: Mapping[str, str]) -> None:
        raise NotImplementedError

    def update_run(self, run_id: str, status: str) -> None:
        raise NotImplementedError

    def run_experiment_id(self, run_id: str) -> str:
        raise NotImplementedError


class _RestBackend(_Backend):
    def __init__(self, uri: str) -> None:
        from prefect_ml.runtime.mlflow_rest import MlflowRest

        self.rest = MlflowRest(uri)

    def experiment_id(self, name, artifact_location):
        return self.rest.get_experiment_id(name)

    def create_experiment(self, name, artifact_location):
        return self.rest.create_experiment(name, artifact_location)

    def create_run(self, experiment_id, run_name, tags):
        return self.rest.create_run(experiment_id, run_name, tags)

    def log_batch(self, run_id, params, metrics, tags):
        self.rest.log_batch(run_id, params=params, metrics=metrics, tags=tags)

    def update_run(self, run_id, status):
        self.rest.update_run(run_id, status)

    def run_experiment_id(self, run_id):
        return str(self.rest.get_run(run_id)["info"]["experiment_id"])


class _LibraryBackend(_Backend):
    def experiment_id(self, name, artifact_location):
        exp = client().get_experiment_by_name(name)
        return None if exp is None else exp.experiment_id

    def create_experiment(self, name, artifact_location):
        kwargs = {"artifact_location": artifact_location} if artifact_location else {}
        return client().create_experiment(name, **kwargs)

    def create_run(self, experiment_id, run_name, tags):
        return client().create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id

    def log_batch(self, run_id, params, metrics, tags):
        from mlflow.entities import Metric, Param, RunTag

        client().log_batch(run_id, metrics=[Metric(k, v, ts, st) for k, v, ts, st in metrics],
                           params=[Param(k, v) for k, v in params.items()],
                           tags=[RunTag(k, v) for k, v in tags.items()])

    def update_run(self, run_id, status):
        client().set_terminated(run_id, status=status)

    def run_experiment_id(self, run_id):
        return client().get_run(run_id).info.experiment_id


def backend() -> _Backend:
    """The tracking backend for the configured URI (cached per URI)."""
    from prefect_ml.runtime.mlflow_rest import is_http

    uri = tracking_uri()
    with _lock:
        if uri not in _backends:
            _backends[uri] = _RestBackend(uri) if is_http(uri) else _LibraryBackend()
        return _backends[uri]


# --- the background writer (shared with the artifact observers: runtime.background) ---------------------

_Writer = background.Writer


def flush(timeout: float = 120.0, warn: Callable[[str], None] | None = None) -> list[str]:
    """Apply every queued MLflow write (and queued artifact) now; failures go to `warn`."""
    return background.flush(timeout, warn)


def _write(what: str, fn: Callable[[], None], *, wait: bool = False) -> None:
    if wait:
        fn()
    else:
        background.submit(what, fn)


# --- runs ----------------------------------------------------------------------------------------------

_experiments: dict[tuple[str, str], str] = {}


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing (memoised per tracking URI: one query per process)."""
    memo_key = (tracking_uri(), name)
    if memo_key in _experiments:
        return _experiments[memo_key]
    b = backend()
    uri = tracking_uri()
    location = f"{get_settings().mlflow_artifact_location}/{name}" if uri.startswith("sqlite:") else None
    exp_id = b.experiment_id(name, location)
    if exp_id is None:
        try:
            exp_id = b.create_experiment(name, location)
        except Exception:  # created concurrently by another run
            exp_id = b.experiment_id(name, location)
            if exp_id is None:
                raise
    _experiments[memo_key] = exp_id
    return exp_id


def _param(value: Any) -> str:
    """A param value as MLflow stores it: text, redacted (a URI parameter may carry a credential
    that is refused only later, when the step checks it), at most 6000 characters."""
    from prefect_ml.storage import redact

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact(text)[:6000]


def start_run(experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None,
              params: Mapping[str, Any] | None = None, *, wait: bool = False) -> str:
    """Create a run (nested under `parent_run_id` if given) and return its id; params are queued."""
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    b = backend()
    run_id = b.create_run(experiment_id(experiment), run_name, all_tags)
    if params:
        values = {k: _param(v) for k, v in params.items() if v is not None}
        if values:
            _write(f"params of run {run_id}", lambda: b.log_batch(run_id, values, [], {}), wait=wait)
    return run_id


def end_run(run_id: str, ok: bool, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, Any] | None = None, *, wait: bool = False) -> None:
    """Log final metrics and tags in one batch, then end the run (queued unless `wait`)."""
    b = backend()
    now = int(time.time() * 1000)
    ms = [(k, float(v), now, 0) for k, v in (metrics or {}).items()
          if isinstance(v, (int, float)) and math.isfinite(v)]
    ts = {k: str(v)[:5000] for k, v in (tags or {}).items()}

    def apply() -> None:
        if ms or ts:
            b.log_batch(run_id, {}, ms, ts)
        b.update_run(run_id, "FINISHED" if ok else "FAILED")

    _write(f"end of run {run_id}", apply, wait=wait)


def set_tags(run_id: str, tags: Mapping[str, Any], *, wait: bool = False) -> None:
    b = backend()
    ts = {k: str(v)[:5000] for k, v in tags.items()}
    _write(f"tags of run {run_id}", lambda: b.log_batch(run_id, {}, [], ts), wait=wait)


def run_link(run_id: str) -> str:
    """A link to the run in the MLflow UI when the tracking URI is a server, else the run id."""
    from prefect_ml.storage import redact

    uri = tracking_uri()
    shown = redact(uri)  # a server URL may carry user:password@
    if uri.startswith("http"):
        return f"{shown.rstrip('/')}/#/experiments/{backend().run_experiment_id(run_id)}/runs/{run_id}"
    return f"run {run_id} in {shown}"


class TrackingObserver(StepObserver):
    """A nested MLflow run per step: params = inputs, metrics = its `metrics` outputs, tags = ids and outputs.

    The step's command gets `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID`, so it can log more to its run.
    Only the run's creation is on the step's path; its params and its end are queued (`flush`).
    """

    def step_started(self, ctx: StepContext) -> None:
        d, run = ctx.decision, ctx.run
        tags = {
            "prefect.flow_run_id": run.flow_run_id or "",
            "prefect.task_run_id": ctx.task_run_id,
            "prefect_ml.step": ctx.step_name,
            "prefect_ml.component": f"{ctx.component.name}:{ctx.component.version}",
            "prefect_ml.cache_key": d.key,
            "prefect_ml.infrastructure": ctx.infrastructure,
            "prefect_ml.cache": "hit" if d.reuse else "miss",
        }
        ctx.mlflow_run_id = start_run(run.experiment, ctx.step_name, tags, run.mlflow_run_id,
                                      {**d.raw_values, **d.data})
        ctx.env["MLFLOW_TRACKING_URI"] = tracking_uri()
        ctx.env["MLFLOW_RUN_ID"] = ctx.mlflow_run_id

    def step_finished(self, ctx: StepContext, result: StepResult, metrics: dict[str, float]) -> None:
        from prefect_ml.runtime.lineage import mlflow_tags

        if ctx.mlflow_run_id:
            tags = {**{f"prefect_ml.output.{k}": v for k, v in result.outputs.items()},
                    **mlflow_tags(result.inputs, result.fingerprints)}
            end_run(ctx.mlflow_run_id, True, metrics=metrics, tags=tags)

    def step_failed(self, ctx: StepContext, error: BaseException) -> None:
        if ctx.mlflow_run_id:
            end_run(ctx.mlflow_run_id, False)
