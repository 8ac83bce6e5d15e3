"""MLflow tracking: a parent run per pipeline run, a nested run per step.

Only `MlflowClient` is used (no fluent API): steps run in threads, and the fluent API keeps its
active-run stack per thread. `mlflow` is imported lazily because it costs ~2 s.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prefect_ml.runtime.observers import StepContext, StepObserver
from prefect_ml.settings import get_settings

if TYPE_CHECKING:
    from prefect_ml.records import StepResult

_lock = threading.Lock()
_clients: dict[str, Any] = {}


def tracking_uri() -> str:
    return get_settings().mlflow_tracking_uri


def client():
    """An MlflowClient for the configured tracking URI (cached per URI)."""
    uri = tracking_uri()
    with _lock:
        if uri not in _clients:
            from mlflow.tracking import MlflowClient

            if uri.startswith("sqlite:///"):
                from pathlib import Path

                Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            _clients[uri] = MlflowClient(tracking_uri=uri, registry_uri=uri)
        return _clients[uri]


_experiments: dict[tuple[str, str], str] = {}


def experiment_id(name: str) -> str:
    """The id of experiment `name`, created if missing (memoised per tracking URI: one query per process)."""
    memo_key = (tracking_uri(), name)
    if memo_key in _experiments:
        return _experiments[memo_key]
    c = client()
    exp = c.get_experiment_by_name(name)
    if exp is None:
        kwargs = {}
        if tracking_uri().startswith("sqlite:"):
            kwargs["artifact_location"] = f"{get_settings().mlflow_artifact_location}/{name}"
        try:
            exp_id = c.create_experiment(name, **kwargs)
        except Exception:  # created concurrently by another run
            exp = c.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
    else:
        exp_id = exp.experiment_id
    _experiments[memo_key] = exp_id
    return exp_id


def _param(value: Any) -> str:
    """A param value as MLflow stores it: text, redacted (a URI parameter may carry a credential
    that is refused only later, when the step checks it), at most 6000 characters."""
    from prefect_ml.storage import redact

    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return redact(text)[:6000]


def start_run(experiment: str, run_name: str, tags: Mapping[str, str], parent_run_id: str | None = None,
              params: Mapping[str, Any] | None = None) -> str:
    """Create a run (nested under `parent_run_id` if given) and return its id."""
    from mlflow.entities import Param

    c = client()
    all_tags = {k: str(v) for k, v in tags.items()}
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = c.create_run(experiment_id(experiment), run_name=run_name, tags=all_tags)
    if params:
        c.log_batch(run.info.run_id, params=[Param(k, _param(v)) for k, v in params.items() if v is not None])
    return run.info.run_id


def end_run(run_id: str, ok: bool, metrics: Mapping[str, float] | None = None,
            tags: Mapping[str, Any] | None = None) -> None:
    """Log final metrics and tags in one batch, then end the run (each call is a store transaction)."""
    if metrics or tags:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        client().log_batch(
            run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items()
                     if isinstance(v, (int, float)) and math.isfinite(v)],
            tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
        )
    client().set_terminated(run_id, status="FINISHED" if ok else "FAILED")


def set_tags(run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client().log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])


def run_link(run_id: str) -> str:
    """A link to the run in the MLflow UI when the tracking URI is a server, else the run id."""
    from prefect_ml.storage import redact

    uri = tracking_uri()
    shown = redact(uri)  # a server URL may carry user:password@
    if uri.startswith("http"):
        run = client().get_run(run_id)
        return f"{shown.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
    return f"run {run_id} in {shown}"


class TrackingObserver(StepObserver):
    """A nested MLflow run per step: params = inputs, metrics = its `metrics` outputs, tags = ids and outputs.

    The step's command gets `MLFLOW_TRACKING_URI` and `MLFLOW_RUN_ID`, so it can log more to its run.
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
