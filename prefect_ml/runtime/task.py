"""The Prefect task that runs one step: thin glue between Prefect and `runtime.lifecycle`.

A reused step ends in a `Cached` state, so the UI shows which steps ran and which were reused.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from prefect_ml import settings as _settings
from prefect_ml.records import RunSpec, StepResult
from prefect_ml.runtime.artifacts import ArtifactsObserver
from prefect_ml.runtime.lifecycle import run_lifecycle
from prefect_ml.runtime.lineage import LineageObserver
from prefect_ml.runtime.observers import StepObserver
from prefect_ml.runtime.tracking import TrackingObserver

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Component


def default_observers() -> list[StepObserver]:
    """The observers every step gets, in call order (tracking first: it provides MLFLOW_RUN_ID)."""
    return [TrackingObserver(), ArtifactsObserver(), LineageObserver()]


@task(cache_policy=NO_CACHE, persist_result=False)
def run_step(component: Component, inputs: dict[str, Any], run: RunSpec, step_name: str) -> StepResult | State:
    """Run (or reuse) one step. Returns a `StepResult`; a reused step ends in a `Cached` state.

    `component` and `run` arrive wrapped in `prefect.utilities.annotations.quote` (Prefect does
    not walk into them); `inputs` is walked, so a producer's future becomes its result here.
    """
    from prefect import runtime

    from prefect_ml.runtime import task_runners

    # prefect-dask hands `quote(...)`d parameters over as plain 1-tuples (Dask rebuilds a tuple as a tuple)
    component, run = _unquoted(component), _unquoted(run)
    logger = get_run_logger()
    worker = task_runners.dask_worker_address()
    if worker is None:
        result = _run(component, inputs, run, step_name, str(runtime.task_run.id), flush=run.mlflow_run_id is None)
    else:
        # On a Dask worker, maybe another machine: the run's settings snapshot (artifact root, storage
        # options, MLflow store, ...) with this machine's home (staging), environment dirs and CA bundle.
        local = run.settings.for_this_machine()
        where = f"dask worker {worker} ({task_runners.this_process()})"
        task_runners.check_code_dir(component, step_name, where)
        task_runners.check_inline_environment(component, step_name, where)
        logger.info(f"step '{step_name}' on {where}, staging in {local.home_path / 'staging'}")
        with _settings.use_settings(local):
            # the pipeline's flush cannot reach this process's queued MLflow writes: flush them here
            result = _run(component, inputs, replace(run, settings=local), step_name, str(runtime.task_run.id),
                          flush=True, where={"prefect_ml.dask_worker": worker,
                                             "prefect_ml.host": task_runners.this_process()})
    if result.cached:
        return Completed(name="Cached", message=f"reused outputs of cache key {result.key}", data=result)
    return result


def _unquoted(value: Any) -> Any:
    while isinstance(value, tuple) and len(value) == 1:  # quote((x,)) after Dask rebuilt quote(x) as a tuple
        value = value[0]
    return value


def _run(component: Component, inputs: dict[str, Any], run: RunSpec, step_name: str, task_run_id: str, *,
         flush: bool, where: dict[str, str] | None = None) -> StepResult:
    """The lifecycle with the default observers; `flush`: apply this process's queued MLflow writes before
    returning (a standalone step, or a step on a Dask worker); `where`: MLflow tags naming the worker."""
    from prefect_ml.runtime import tracking

    logger = get_run_logger()
    try:
        result = run_lifecycle(component, inputs, run, step_name, task_run_id=task_run_id,
                               log=logger.info, warn=logger.warning, observers=default_observers())
        if where and result.mlflow_run_id:
            tracking.set_tags(result.mlflow_run_id, where)
    finally:
        if flush:
            tracking.flush(warn=logger.warning)
    return result
