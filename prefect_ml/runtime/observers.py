"""Observers: what happens around a step without being part of it (the shape of Metaflow's
`StepDecorator` hooks). MLflow tracking, lineage and Prefect artifacts are observers; the
lifecycle calls them at the same points for a cache hit and for a run.

An observer must never change a step's outcome by accident: `step_started` may add environment
variables for the step's command; `step_finished` and `step_failed` record what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prefect_ml.dsl.component import Component
    from prefect_ml.records import Decision, RunSpec, StepResult


@dataclass(kw_only=True)
class StepContext:
    """One step as observers see it: its spec, the run, the decision and where it runs."""

    step_name: str
    component: Component
    run: RunSpec
    decision: Decision
    infrastructure: str  # the infrastructure's description
    task_run_id: str
    log: Callable[[str], None]
    mlflow_run_id: str | None = None  # the step's MLflow run, once the tracking observer made it
    env: dict[str, str] = field(default_factory=dict)  # extra environment for the step's command


class StepObserver:
    """Hooks around one step. Subclasses override what they need."""

    def step_started(self, ctx: StepContext) -> None:
        """After the decision, before anything runs (also for a cache hit)."""

    def step_finished(self, ctx: StepContext, result: StepResult, metrics: dict[str, float]) -> None:
        """After the outputs are published (or reused)."""

    def step_failed(self, ctx: StepContext, error: BaseException) -> None:
        """After a failure: nothing was published."""

