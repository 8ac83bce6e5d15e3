"""The Prefect task that runs one step: thin glue between Prefect and `runtime.lifecycle`.

A reused step ends in a `Cached` state, so the UI shows which steps ran and which were reused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

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

    logger = get_run_logger()
    try:
        result = run_lifecycle(component, inputs, run, step_name, task_run_id=str(runtime.task_run.id),
                               log=logger.info, warn=logger.warning, observers=default_observers())
    finally:
        if run.mlflow_run_id is None:  # a standalone step: no pipeline flushes its queued MLflow writes
            from prefect_ml.runtime import tracking

            tracking.flush(warn=logger.warning)
    if result.cached:
        return Completed(name="Cached", message=f"reused outputs of cache key {result.key}", data=result)
    return result
