"""The submit hook: how calling a component reaches the pipeline run that executes it.

The pattern of Kubeflow Pipelines' `dsl/pipeline_context.py`: a running `@pipeline` activates
itself here, and `Component.__call__` hands the call to whatever is active. So the component
spec never imports the pipeline or the runtime below it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

from prefect_ml.dsl.step import Step
from prefect_ml.records import RunSpec

# Where a component call goes when no pipeline is active: run the step at once, standalone.
# A name, not an import, because that code sits above this layer (Metaflow's plugin pattern).
STANDALONE_SUBMITTER = "prefect_ml.dsl.pipeline:submit_standalone"


class StepSubmitter(Protocol):
    """What a pipeline run offers to the calls made while it is active (components, gates, registration)."""

    spec: RunSpec
    steps: list[Step]
    planning: bool  # `prefect-ml plan`: decide each step, run nothing
    notes: list[str]  # what planning could not decide (shown by `prefect-ml plan`)

    def submit(self, component: Any, kwargs: Mapping[str, Any]) -> Step: ...


_active: ContextVar[StepSubmitter | None] = ContextVar("prefect_ml_active_pipeline_run", default=None)


def active() -> StepSubmitter | None:
    """The pipeline run whose body is executing in this context, if any."""
    return _active.get()


@contextmanager
def activate(run: StepSubmitter) -> Iterator[StepSubmitter]:
    """Make `run` receive component calls for the duration of the block."""
    token = _active.set(run)
    try:
        yield run
    finally:
        _active.reset(token)


def submit(component: Any, kwargs: Mapping[str, Any]) -> Step:
    """Submit a component call to the active pipeline run, or run it standalone when none is."""
    run = active()
    if run is not None:
        return run.submit(component, kwargs)
    module, _, name = STANDALONE_SUBMITTER.partition(":")
    standalone = getattr(importlib.import_module(module), name)
    return standalone(component, kwargs)
