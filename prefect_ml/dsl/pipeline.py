"""`@pipeline`: a Prefect flow in which calling a component submits a step.

Steps are submitted to the flow's task runner and return at once; a step that takes another
step's output waits for it (Prefect resolves the future), so order follows data and independent
steps run concurrently. The running pipeline activates itself in `dsl.context`, which is how a
component call reaches it.
"""

from __future__ import annotations

import functools
import inspect
import threading
import typing
import weakref
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.utilities.annotations import quote

from prefect_ml import _compat, storage
from prefect_ml.dsl import context
from prefect_ml.dsl.component import Component
from prefect_ml.dsl.step import OutputRef, Step
from prefect_ml.errors import StepInputError
from prefect_ml.records import RunSpec, StepResult
from prefect_ml.runtime import tracking
from prefect_ml.runtime.lifecycle import UPSTREAM
from prefect_ml.runtime.task_runners import PipelineTaskRunner
from prefect_ml.settings import PrefectMLSettings, get_settings, use_settings


@dataclass(frozen=True, kw_only=True)
class PipelineOptions:
    """What `@pipeline(...)` was given (besides Prefect's own flow options)."""

    infrastructure: str | None = None
    cache: bool = True
    experiment: str | None = None
    artifact_root: str | None = None


@dataclass(frozen=True, kw_only=True)
class PipelineDefinition:
    """A pipeline's undecorated body and options, kept apart from the Prefect flow object."""

    name: str
    func: Callable[..., Any]
    options: PipelineOptions


# flow.fn -> definition. Keyed by the flow's function (which `Flow.with_options` keeps), so no
# attributes are attached to Prefect's Flow objects.
_definitions: weakref.WeakKeyDictionary[Callable[..., Any], PipelineDefinition] = weakref.WeakKeyDictionary()


def definition_of(pipeline_flow: Any) -> PipelineDefinition | None:
    """The `PipelineDefinition` behind a `@pipeline` flow, or None for anything else."""
    fn = getattr(pipeline_flow, "fn", None)
    return _definitions.get(fn) if fn is not None else None


@dataclass
class PipelineRun:
    """State of one running (or planned) pipeline; active in `dsl.context` while its body runs."""

    spec: RunSpec
    planning: bool = False  # `prefect-ml plan`: decide each step, run nothing
    steps: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    names: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def step_name(self, component: Component) -> str:
        with self.lock:
            self.names[component.name] += 1
            n = self.names[component.name]
        return component.name if n == 1 else f"{component.name}-{n}"

    def submit(self, component: Component, kwargs: Mapping[str, Any], name: str | None = None) -> Step:
        """Validate a component call and submit it as a step (see `Component.__call__`).

        `name` overrides the step (task run) name, e.g. a sweep's `train-trial-3`."""
        params = _bind(component, kwargs)
        name = name or self.step_name(component)
        if self.planning:
            return self._plan_step(component, params, name)
        future = _step_task(component, name).submit(quote(component), params, quote(self.spec), name)
        step = Step(name, component, future, siblings=self.steps)
        self.steps.append(step)
        return step

    def _plan_step(self, component: Component, params: dict[str, Any], name: str) -> Step:
        """Decide a step without running it; its outputs get the URIs they would have."""
        from prefect_ml.runtime.lifecycle import decide, infrastructure_for
        from prefect_ml.runtime.outputs import output_rel_path

        infra = infrastructure_for(component, self.spec)
        root = storage.ArtifactRoot(self.spec.artifact_root)
        d = decide(component, params, self.spec, infra, root)
        outputs = d.published.outputs if d.published else {
            n: storage.join(root.step_uri(d.key), "<new>", output_rel_path(n, o)) for n, o in component.outputs.items()
        }
        result = StepResult(step=name, key=d.key, outputs=outputs, cached=d.reuse, mlflow_run_id=None, inputs=d.data,
                            fingerprints=d.fingerprints, infrastructure=infra.describe())
        step = Step(name, component, result=result, siblings=self.steps)
        step.decision = d
        self.steps.append(step)
        return step


def _step_task(component: Component, task_run_name: str):  # -> prefect Task
    from prefect_ml.runtime.task import run_step

    return run_step.with_options(name=component.name, task_run_name=task_run_name, retries=component.retries,
                                 timeout_seconds=component.timeout)


def _bind(component: Component, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Validated task parameters for a component call: values coerced, literal data checked now."""
    bound = component.bind(kwargs)
    return {name: _check_data_input(component, name, value) if component.inputs[name].is_data and value is not None
            else value for name, value in bound.items()}


def submit_standalone(component: Component, kwargs: Mapping[str, Any]) -> Step:
    """A component called outside any pipeline: run its step at once in a standalone task."""
    params = _bind(component, kwargs)
    spec = _run_spec(component.name, PipelineOptions(experiment="prefect-ml-steps"))
    result = _step_task(component, component.name)(quote(component), params, quote(spec), component.name)
    return Step(component.name, component, result=result)


def _doc_with_field_descriptions(func: Callable[..., Any]) -> str:
    """The function's docstring plus an `Args:` section from `Annotated[..., Field(description=...)]`,
    which is where Prefect reads parameter descriptions for the UI's Run form."""
    from pydantic.fields import FieldInfo

    doc = inspect.getdoc(func) or ""
    if "\nArgs:" in f"\n{doc}":
        return doc
    hints = typing.get_type_hints(func, include_extras=True)
    lines = [f"    {n}: {m.description}" for n in inspect.signature(func).parameters
             for m in getattr(hints.get(n), "__metadata__", ()) if isinstance(m, FieldInfo) and m.description]
    # griffe (Prefect's docstring parser) needs a summary line before the Args section
    return doc if not lines else (doc or f"Pipeline {func.__name__}.") + "\n\nArgs:\n" + "\n".join(lines)


def _check_data_input(component: Component, name: str, value: Any) -> Any:
    """Literal data inputs must exist now: fail before anything starts."""
    from prefect_ml.assets import is_asset_ref, resolve_asset

    if isinstance(value, OutputRef):
        spec = component.inputs[name]
        if value.type == "metrics" or (spec.type == "mlflow_model" and value.type != "mlflow_model"):
            raise StepInputError(
                f"component '{component.name}', input '{name}' ({spec.type}) cannot take output "
                f"'{value.name}' ({value.type}) of step '{value.step_name}'."
            )
        producer = value.step.future if value.step.future is not None else value.step.result()
        return {UPSTREAM: producer, "output": value.name}
    if isinstance(value, str) and is_asset_ref(value):
        value = resolve_asset(value)
    if not isinstance(value, (str, Path)):
        raise StepInputError(
            f"component '{component.name}', input '{name}': expects a URI or path (str), a data asset or a step "
            f"output, got {type(value).__name__}."
        )
    uri = storage.normalize(str(value))
    if not storage.exists(uri):
        raise StepInputError(
            f"component '{component.name}', input '{name}': data {str(value)!r} does not exist; "
            "check the path or URI (or register it as a data asset)."
        )
    return uri


def _run_spec(flow_name: str, options: PipelineOptions, flow_run_id: str | None = None,
              settings: PrefectMLSettings | None = None) -> RunSpec:
    """The run's settings from the decorator's options and the PREFECT_ML_* settings (read once here)."""
    settings = settings or get_settings()
    return RunSpec(
        pipeline=flow_name, flow_run_id=flow_run_id,
        artifact_root=storage.normalize(options.artifact_root or settings.resolved_artifact_root),
        experiment=options.experiment or flow_name, infrastructure=options.infrastructure,
        cache=options.cache and settings.cache, settings=settings,
    )


def plan(pipeline_flow: Any, parameters: dict[str, Any] | None = None) -> PipelineRun:
    """Evaluate a pipeline's body in planning mode: every step's cache key and reuse decision, nothing run.

    Gates on metrics of reused steps are evaluated for real; a gate on a step that would run is
    assumed to pass (so the plan shows what follows it) and noted.
    """
    definition = definition_of(pipeline_flow)
    if definition is None:
        raise TypeError(f"{pipeline_flow!r} is not a @pipeline")
    run = PipelineRun(_run_spec(pipeline_flow.name, definition.options), planning=True)
    params = dict(parameters or {})
    if params:
        params = pipeline_flow.validate_parameters(params)
    with context.activate(run):
        definition.func(**params)
    return run


def _resolve(value: Any) -> Any:
    """Replace step outputs in a pipeline's return value with their URIs."""
    if isinstance(value, OutputRef):
        return value.uri()
    if isinstance(value, Step):
        return dict(value.result().outputs)
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v) for v in value)
    return value


def _run_body(flow_name: str, func: Callable[..., Any], options: PipelineOptions,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """The flow body: an MLflow parent run, the user's function with this run active, then wait."""
    from prefect import runtime

    flow_run_id = str(runtime.flow_run.id)
    spec = _run_spec(flow_name, options, flow_run_id)
    storage.ArtifactRoot(spec.artifact_root)  # unknown scheme fails here, before any step
    _check_task_runner(spec)  # a distributed run that its workers could not serve fails here too
    mlflow_run_id = tracking.start_run(
        spec.experiment, f"{flow_name}-{runtime.flow_run.name}",
        {"prefect.flow_run_id": flow_run_id, "prefect_ml.pipeline": flow_name,
         "prefect_ml.artifact_root": spec.artifact_root},
        params=dict(runtime.flow_run.parameters or {}),
    )
    run = PipelineRun(replace(spec, mlflow_run_id=mlflow_run_id))
    ok = False
    try:
        # the run's settings, read once: every step and observer sees the same (and skips re-reading them)
        with context.activate(run), use_settings(spec.settings):
            result = func(*args, **kwargs)
            for step in list(run.steps):
                step.wait()
            for step in list(run.steps):
                step.result()  # raises the first failed step's own error, not a dependant's "not ready"
            resolved = _resolve(result)
        ok = True
        return resolved
    finally:
        try:  # the summary also helps on failed runs
            from prefect_ml.runtime.artifacts import pipeline_summary

            pipeline_summary(run.spec, run.steps)
        except Exception as exc:
            from prefect import get_run_logger

            get_run_logger().warning(f"could not write the pipeline summary artifact: {exc}")
        tracking.end_run(mlflow_run_id, ok)
        # every queued MLflow write (steps' params, metrics, ends; gate tags; this run's end) lands
        # before the flow returns, on success and on failure alike
        from prefect import get_run_logger

        tracking.flush(warn=get_run_logger().warning)


def _check_task_runner(spec: RunSpec) -> None:
    """Refuse, before any step or MLflow run, a distributed run whose workers could not share its outputs."""
    from prefect import get_run_logger
    from prefect.context import FlowRunContext

    from prefect_ml.runtime import task_runners

    ctx = FlowRunContext.get()
    runner = ctx.task_runner if ctx is not None else None
    if runner is None or not task_runners.is_distributed(runner):
        return
    from prefect.settings import get_current_settings

    where = task_runners.describe(runner)
    task_runners.check_distributed_run(spec.artifact_root, spec.settings.mlflow_tracking_uri, where,
                                       prefect_api_url=get_current_settings().api.url)
    get_run_logger().info(f"steps run on {where}; artifact root {storage.redact(spec.artifact_root)}")


def pipeline(
    fn: Callable[..., Any] | None = None,
    *,
    name: str | None = None,
    infrastructure: str | None = None,
    cache: bool = True,
    experiment: str | None = None,
    artifact_root: str | None = None,
    default_compute: str | None = None,
    task_runner: Any = None,
    **flow_kwargs: Any,
) -> Any:
    """Turn a function into a pipeline: a Prefect flow whose component calls are steps.

    Args:
        name: flow name (default: the function name with '_' -> '-').
        infrastructure: default infrastructure for its steps (a saved block name, `process` or `docker`).
        cache: reuse steps whose cache key is unchanged (per-component and per-call `cache=` too).
        experiment: MLflow experiment (default: the flow name).
        artifact_root: fsspec URI for outputs (default: `PREFECT_ML_ARTIFACT_ROOT`).
        default_compute: the Azure ML SDK's name for `infrastructure` (same meaning; give one of them).
        task_runner: where the steps run, as for a Prefect flow: a `TaskRunner` (e.g. prefect-dask's
            `DaskTaskRunner(address="tcp://127.0.0.1:8786")`) or a name, `"threads"` or `"dask"` (at
            `PREFECT_ML_DASK_ADDRESS`). Default: the setting `PREFECT_ML_TASK_RUNNER`, read when a run starts.
        **flow_kwargs: passed to `prefect.flow` (retries, log_prints, description, ...).

    Example:
        @pipeline(infrastructure="cpu")
        def my_pipeline(data: str, learning_rate: float = 0.1):
            prep = data_prep(data=data)
            model = train(train_data=prep.outputs.train_data, learning_rate=learning_rate)
            return {"model": model.outputs.model}
    """
    if default_compute is not None:
        if infrastructure is not None and infrastructure != default_compute:
            raise TypeError(f"@pipeline: give infrastructure= or default_compute= (the Azure ML SDK's name for it), "
                            f"not both ({infrastructure!r} vs {default_compute!r}).")
        infrastructure = default_compute.removeprefix("azureml:")
    options = PipelineOptions(infrastructure=infrastructure, cache=cache, experiment=experiment,
                              artifact_root=artifact_root)
    runner = PipelineTaskRunner(task_runner)  # an unknown name fails here, at decoration

    def decorate(func: Callable[..., Any]) -> Any:
        flow_name = name or func.__name__.replace("_", "-")

        @functools.wraps(func)
        def body(*args: Any, **kwargs: Any) -> Any:
            return _run_body(flow_name, func, options, args, kwargs)

        body.__doc__ = _doc_with_field_descriptions(func)
        f = flow(name=flow_name, task_runner=runner, **flow_kwargs)(body)
        _definitions[f.fn] = PipelineDefinition(name=flow_name, func=func, options=options)
        _compat.skip_heartbeat_join(lambda flow: definition_of(flow) is not None)
        return f

    return decorate(fn) if fn is not None else decorate
